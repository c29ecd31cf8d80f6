"""Batched and chunked layerwise prefill: requests with different hits and read sides in one
forward, and one request split into chunks (as dualkv.sched.PrefillBatcher forms them), give
the same tokens and byte-identical KV as a full recompute."""
import numpy as np
import pytest
import torch

from conftest import TINY, check_written_back, reference_generate
from dualkv.engine import (BlockBuffer, BufferSink, BufferSource, LayerBlockCodec, PrefillItem,
                           SlotSource, StoreWriteBack, decode, prefill_basic_batch, prefill_batch,
                           run_turn)
from dualkv.errors import InvalidArgument

BT = 16


def conversation_prompt(model, store, seed, first_len, append_len):
    """A second-turn prompt whose first turn is already stored."""
    rng = np.random.default_rng(seed)
    first = [int(t) for t in rng.integers(0, TINY.vocab_size, first_len)]
    gen = run_turn(model, store, first, 6).generated
    return np.asarray(first + gen + [int(t) for t in rng.integers(0, TINY.vocab_size, append_len)],
                      np.int32)


def start_request(store, prompt, read_side):
    keys = store.chain_keys(prompt)
    hit = store.match(keys)
    buffer = BlockBuffer(store.pool, store.layout, len(prompt))
    slots = buffer.slots[:hit] if read_side == "de" else None
    return keys, SlotSource.load(store, keys[:hit], slots), buffer


def finish_request(model, store, codec, prompt, keys, source, buffer, first, num_gen):
    source.close()
    cached = source.num_blocks
    writeback = StoreWriteBack(store, codec, cached, keys[cached - 1] if cached else None)
    out = decode(model, buffer, codec, prompt, first, num_gen, num_cached_blocks=cached,
                 writeback=writeback)
    writeback.finish()
    buffer.free()
    return out


def test_batch_of_requests_on_both_read_sides(model, memory_store):
    codec = LayerBlockCodec(TINY, BT)
    prompts = [conversation_prompt(model, memory_store, s, n, a)
               for s, n, a in [(1, 40, 9), (2, 70, 30), (3, 20, 3)]]
    sides = ["pe", "de", "pe"]
    started = [start_request(memory_store, p, side) for p, side in zip(prompts, sides)]
    items = [PrefillItem(p, source, BufferSink(buffer, codec), side)
             for p, (_, source, buffer), side in zip(prompts, started, sides)]
    firsts = prefill_batch(model, items, codec)
    for prompt, (keys, source, buffer), first in zip(prompts, started, firsts):
        out = finish_request(model, memory_store, codec, prompt, keys, source, buffer, first, 12)
        assert out == reference_generate(model, prompt, 12)
    assert memory_store.pool.num_free == memory_store.pool.num_slots


def test_basic_batch_loads_every_hit_first_and_matches_a_recompute(model, memory_store):
    """Basic batches its forward as DualPath does; only when KV moves differs: every hit is
    in before the first layer runs, and nothing reaches a sink before the last one ran."""
    codec = LayerBlockCodec(TINY, BT)
    prompts = [conversation_prompt(model, memory_store, s, n, a)
               for s, n, a in [(4, 50, 7), (5, 33, 21)]]
    started = [start_request(memory_store, p, "pe") for p in prompts]
    log = []

    class Logged:
        def __init__(self, inner, tag):
            self.inner, self.tag = inner, tag

        def __getattr__(self, name):
            method = getattr(self.inner, name)

            def call(*args):
                if name in ("wait_layer", "put_layer"):
                    log.append((name, self.tag, args[0]))
                return method(*args)
            return call
    items = [PrefillItem(p, Logged(source, i), Logged(BufferSink(buffer, codec), i), "pe")
             for i, (p, (_, source, buffer)) in enumerate(zip(prompts, started))]
    firsts = prefill_basic_batch(model, items, codec)
    waits = [i for i, entry in enumerate(log) if entry[0] == "wait_layer"]
    puts = [i for i, entry in enumerate(log) if entry[0] == "put_layer"]
    assert len(waits) == len(puts) == 2 * TINY.num_layers and max(waits) < min(puts)
    for prompt, (keys, source, buffer), first in zip(prompts, started, firsts):
        out = finish_request(model, memory_store, codec, prompt, keys, source, buffer, first, 10)
        assert out == reference_generate(model, prompt, 10)
    with pytest.raises(InvalidArgument, match="prefill side"):
        prefill_basic_batch(model, [PrefillItem(prompts[0], None, None, "de")], codec)


@pytest.mark.parametrize("read_side", ["pe", "de"])
def test_chunked_prefill_continues_from_the_de_buffer(model, memory_store, read_side):
    codec = LayerBlockCodec(TINY, BT)
    prompt = conversation_prompt(model, memory_store, 4, 50, 60)  # 116 tokens, 3 blocks hit
    other = conversation_prompt(model, memory_store, 5, 30, 10)
    keys, source, buffer = start_request(memory_store, prompt, read_side)
    okeys, osource, obuffer = start_request(memory_store, other, "de")
    # pass 1: chunk [48, 75) batched with another whole request
    chunk1 = PrefillItem(prompt, source, BufferSink(buffer, codec), read_side, end=75)
    firsts = prefill_batch(model, [chunk1, PrefillItem(other, osource, BufferSink(obuffer, codec), "de")], codec)
    assert firsts[0] is None and not buffer.is_complete()
    # passes 2 and 3 read [0, cached) back from the DE buffer, cut mid-block
    mid = prefill_batch(model, [PrefillItem(prompt, BufferSource(buffer, 75), BufferSink(buffer, codec),
                                            read_side, end=101, first_chunk=False)], codec)
    last = prefill_batch(model, [PrefillItem(prompt, BufferSource(buffer, 101), BufferSink(buffer, codec),
                                             read_side, end=len(prompt), first_chunk=False)], codec)
    assert mid == [None] and buffer.is_complete()
    out = finish_request(model, memory_store, codec, prompt, keys, source, buffer, last[0], 10)
    assert out == reference_generate(model, prompt, 10)
    other_out = finish_request(model, memory_store, codec, other, okeys, osource, obuffer, firsts[1], 5)
    assert other_out == reference_generate(model, other, 5)
    seq = list(prompt) + out
    _, ref = model.forward(torch.tensor(seq))
    stored = memory_store.chain_keys(np.asarray(seq, np.int32))
    assert memory_store.match(stored) == (len(seq) - 1) // BT
    slot = memory_store.pool.alloc(1)
    for b in range(len(stored)):
        memory_store.wait(memory_store.load(stored[b:b + 1], slot), 5)
        for layer in range(TINY.num_layers):
            got = codec.tensor(memory_store.pool.layer_view(int(slot[0]), layer))
            assert torch.equal(got, ref[layer][b * BT:(b + 1) * BT])
    memory_store.pool.free(slot)


def test_decoder_batches_requests_that_join_and_leave(model, memory_store):
    from dualkv.engine import Decoder

    codec = LayerBlockCodec(TINY, BT)
    prompts = [conversation_prompt(model, memory_store, s, n, a)
               for s, n, a in [(6, 40, 9), (7, 64, 20), (8, 25, 2)]]
    num_gen = [20, 7, 15]
    decoder, results, writebacks = Decoder(model, codec), {}, []
    for rid, prompt in enumerate(prompts):
        keys, source, buffer = start_request(memory_store, prompt, "pe")
        sink = BufferSink(buffer, codec)
        first = prefill_batch(model, [PrefillItem(prompt, source, sink, "pe")], codec)[0]
        source.close()
        cached = source.num_blocks
        writebacks.append(StoreWriteBack(memory_store, codec, cached, keys[cached - 1] if cached else None))
        decoder.admit(rid, buffer, prompt, first, num_gen[rid], num_cached_blocks=cached,
                      writeback=writebacks[-1])
        results.update(decoder.step())  # request rid joins a batch already running
    while decoder.num_running:
        results.update(decoder.step())
    for wb in writebacks:
        wb.finish()
    for rid, prompt in enumerate(prompts):
        assert results[rid] == reference_generate(model, prompt, num_gen[rid])
        check_written_back(model, memory_store, codec, list(prompt) + results[rid])
