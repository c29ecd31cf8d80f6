"""A PE process and a DE process, joined by UCX and ZeroMQ, sharing a block directory: a
multi-turn conversation on both read sides gives the tokens of a full recompute, and the
blocks the DE wrote back hold the recomputed KV byte for byte."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")

from dualkv.engine import LayerBlockCodec, Model, ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=256, hidden=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, ffn=128)
BT = 16


def reference(model, prompt, num_tokens):
    seq = list(prompt)
    for _ in range(num_tokens):
        seq.append(int(model.forward(torch.tensor(seq))[0].argmax()))
    return seq[len(prompt):]


@pytest.fixture
def cluster(block_root):
    from dualkv.cluster.local import LocalCluster

    try:
        with LocalCluster(CFG, block_root, seed=3, block_tokens=BT, timeout_s=120) as c:
            yield c
    except Exception as exc:  # a build without UCX, or no IPC sockets
        if "UCX" in str(exc) or "Unavailable" in type(exc).__name__:
            pytest.skip(str(exc))
        raise


@pytest.mark.slow
def test_conversation_across_processes(cluster, block_root):
    from dualkv.store import BlockStore, StoreConfig

    model = Model.from_seed(CFG, seed=3, batch_invariant=True)
    rng = np.random.default_rng(2)
    prompt = [int(t) for t in rng.integers(0, CFG.vocab_size, 40)]
    for turn, side in enumerate(["pe", "de", "pe", "de"]):
        result = cluster.run_turn(prompt, 10, side)
        assert result.generated == reference(model, prompt, 10), (turn, side)
        assert result.num_cached_blocks == result.num_matched_blocks
        assert (result.num_cached_blocks > 0) == (turn > 0)
        prompt = prompt + result.generated + [int(t) for t in rng.integers(0, CFG.vocab_size, 9)]
    seq = prompt[:-9]  # the last turn's prompt + generated tokens
    codec = LayerBlockCodec(CFG, BT)
    _, ref_kv = model.forward(torch.tensor(seq))
    with BlockStore(StoreConfig(block_root, CFG.layout(BT), pool_slots=4, cuda="off")) as store:
        keys = store.chain_keys(np.asarray(seq, np.int32))
        assert store.match(keys) == (len(seq) - 1) // BT  # rebuilt from the DE's block files
        slot = store.pool.alloc(1)
        for b in range(store.match(keys)):
            assert store.wait(store.load(keys[b:b + 1], slot), 10).all()
            for layer in range(CFG.num_layers):
                got = codec.tensor(store.pool.layer_view(int(slot[0]), layer))
                assert torch.equal(got, ref_kv[layer][b * BT:(b + 1) * BT]), (b, layer)
