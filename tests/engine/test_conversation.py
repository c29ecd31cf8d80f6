"""Multi-turn agentic conversations through prefill + decode + write-back, on both read sides
and under Basic: generated tokens equal a no-cache greedy recompute, and every Full Block
written back equals the recomputed KV byte for byte (fp32 on CPU, same ops and op order for
cached and recomputed tokens; see test notes where a tolerance would be needed)."""
import numpy as np
import pytest
import torch

from conftest import (TINY, MemoryBlockStore, check_written_back, make_unreadable,
                      reference_generate)
from dualkv.engine import LayerBlockCodec, Model, run_turn

MODES = [("dualpath", "pe"), ("dualpath", "de"), ("basic", "pe")]


def agentic_turns(seed, num_turns, first_len, vocab):
    """(appended tokens, generation length) per turn, like the paper's replay (App. A.3)."""
    rng = np.random.default_rng(seed)
    turns = [(rng.integers(0, vocab, first_len), int(rng.integers(3, 40)))]
    for _ in range(num_turns - 1):
        turns.append((rng.integers(0, vocab, int(rng.integers(1, 50))), int(rng.integers(1, 40))))
    return turns


@pytest.mark.parametrize("mode,read_side", MODES)
@pytest.mark.parametrize("seed,block_tokens,first_len", [(1, 16, 40), (2, 16, 100), (3, 64, 150)])
def test_conversation_matches_full_recompute(model, make_store, mode, read_side, seed,
                                            block_tokens, first_len):
    store = make_store(block_tokens)
    codec = LayerBlockCodec(TINY, block_tokens)
    prompt = []
    for turn, (appended, num_gen) in enumerate(agentic_turns(seed, 4, first_len, TINY.vocab_size)):
        prompt = prompt + [int(t) for t in appended]
        result = run_turn(model, store, prompt, num_gen, mode, read_side)
        assert result.generated == reference_generate(model, prompt, num_gen), f"turn {turn}"
        assert result.num_cached_blocks == result.num_matched_blocks
        if turn:
            assert result.num_cached_blocks == min(stored_blocks, len(prompt) // block_tokens)
        check_written_back(model, store, codec, prompt + result.generated)
        stored_blocks = (len(prompt) + num_gen - 1) // block_tokens
        prompt = prompt + result.generated
    assert store.pool.num_free == store.pool.num_slots  # every buffer and slot came back


@pytest.mark.parametrize("mode,read_side", MODES)
def test_plain_model_matches_within_fp_tolerance(make_store, mode, read_side):
    """Without batch_invariant the engine uses torch's fused attention and unpadded GEMMs:
    a token's KV then depends in its last bits on how many tokens shared its matmuls (MKL
    picks kernels by shape), so written-back KV matches a recompute to 1e-5, not bytes."""
    model = Model.from_seed(TINY, seed=7)
    store = make_store(16)
    codec = LayerBlockCodec(TINY, 16)
    prompt = []
    for appended, num_gen in agentic_turns(11, 3, 60, TINY.vocab_size):
        prompt = prompt + [int(t) for t in appended]
        result = run_turn(model, store, prompt, num_gen, mode, read_side)
        assert result.generated == reference_generate(model, prompt, num_gen)
        check_written_back(model, store, codec, prompt + result.generated, exact=False)
        prompt = prompt + result.generated


@pytest.mark.gpu
@pytest.mark.parametrize("mode,read_side", MODES)
def test_cuda_engines_match_cuda_recompute(mode, read_side):
    """On CUDA the engines compute on the GPU and move KV host<->device; cuBLAS picks kernels
    by shape, so KV matches a recompute to 1e-4 (fp32, TF32 off), tokens exactly (greedy)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = Model.from_seed(TINY, seed=7, device="cuda")
    store = MemoryBlockStore(TINY.layout(16), pool_slots=64)
    codec = LayerBlockCodec(TINY, 16)
    prompt = []
    for appended, num_gen in agentic_turns(12, 3, 60, TINY.vocab_size):
        prompt = prompt + [int(t) for t in appended]
        result = run_turn(model, store, prompt, num_gen, mode, read_side)
        assert result.generated == reference_generate(model, prompt, num_gen)
        check_written_back(model, store, codec, prompt + result.generated, exact=False,
                           tol=1e-4)
        prompt = prompt + result.generated


@pytest.mark.parametrize("mode,read_side", MODES)
def test_whole_prompt_cached_recomputes_last_block(model, make_store, mode, read_side):
    memory_store = make_store()
    prompt = list(np.random.default_rng(5).integers(0, TINY.vocab_size, 48))  # 3 full blocks
    first = run_turn(model, memory_store, prompt, 20, mode, read_side)
    again = run_turn(model, memory_store, prompt, 20, mode, read_side)
    assert again.num_matched_blocks == 3
    assert again.generated == first.generated == reference_generate(model, prompt, 20)


@pytest.mark.parametrize("mode,read_side", MODES)
def test_unreadable_block_is_recomputed_not_served(model, make_store, mode, read_side):
    store = make_store()
    rng = np.random.default_rng(9)
    prompt = [int(t) for t in rng.integers(0, TINY.vocab_size, 70)]
    first = run_turn(model, store, prompt, 30, mode, read_side)
    keys = store.chain_keys(np.asarray(prompt, np.int32))
    make_unreadable(store, keys[2])
    nxt = prompt + first.generated + [int(t) for t in rng.integers(0, TINY.vocab_size, 10)]
    result = run_turn(model, store, nxt, 10, mode, read_side)
    assert (result.num_matched_blocks, result.num_cached_blocks) == ((70 + 30 - 1) // 16, 2)
    assert result.generated == reference_generate(model, nxt, 10)
    if hasattr(store, "unreadable"):
        store.unreadable.clear()
    check_written_back(model, store, LayerBlockCodec(TINY, 16), nxt + result.generated)


def test_memory_store_keys_match_the_native_chain(memory_store):
    keys = pytest.importorskip("dualkv.store.keys")
    tokens = np.arange(100, dtype=np.int32) * 7
    prior = np.arange(32, dtype=np.uint8)
    assert np.array_equal(memory_store.chain_keys(tokens, prior), keys.chain_keys(tokens, 16, prior))
