"""Prefill and decode mechanics: layerwise interleaving vs Basic, what each read side sends,
deadlines, and bad input."""
import time

import numpy as np
import pytest

from conftest import TINY, reference_generate
from dualkv.engine import (BlockBuffer, BufferSink, LayerBlockCodec, SlotSource, decode, prefill,
                           run_turn)
from dualkv.errors import InvalidArgument, TimedOut

BT = 16


class Recording:
    """Wraps a source or sink and logs the calls the prefill makes, in order."""

    def __init__(self, inner, log, tag):
        self.inner, self.log, self.tag = inner, log, tag

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def logged(*args):
            if name in ("wait_layer", "put_layer"):
                detail = (args[0],) if name == "wait_layer" else (args[0], args[2], args[1].shape[0])
                self.log.append((name,) + detail)
            return method(*args)
        return logged


def cached_turn(model, store, mode, read_side):
    """Stores a 64-token conversation prefix, then prefills a 90-token prompt over it."""
    rng = np.random.default_rng(4)
    first = [int(t) for t in rng.integers(0, TINY.vocab_size, 64)]
    gen = run_turn(model, store, first, 10, "dualpath", "pe").generated
    prompt = np.asarray(first + gen + [int(t) for t in rng.integers(0, TINY.vocab_size, 16)], np.int32)
    keys = store.chain_keys(prompt)
    hit = store.match(keys)
    buffer = BlockBuffer(store.pool, store.layout, len(prompt))
    slots = buffer.slots[:hit] if read_side == "de" else None
    source = SlotSource.load(store, keys[:hit], slots)
    log = []
    codec = LayerBlockCodec(TINY, BT)
    token = prefill(model, prompt, Recording(source, log, "src"),
                    Recording(BufferSink(buffer, codec), log, "sink"), codec, mode, read_side)
    source.close()
    return prompt, hit, buffer, token, log


def test_layerwise_waits_for_each_layer_just_before_it(model, memory_store):
    prompt, hit, buffer, _, log = cached_turn(model, memory_store, "dualpath", "pe")
    assert hit == 4
    expected = []
    for layer in range(TINY.num_layers):
        expected += [("wait_layer", layer), ("put_layer", layer, 0, len(prompt))]
    assert log == expected
    buffer.free()


def test_de_side_sends_only_new_tokens(model, memory_store):
    prompt, hit, buffer, token, log = cached_turn(model, memory_store, "dualpath", "de")
    puts = [entry for entry in log if entry[0] == "put_layer"]
    assert puts == [("put_layer", layer, hit * BT, len(prompt) - hit * BT)
                    for layer in range(TINY.num_layers)]
    assert token == reference_generate(model, prompt, 1)[0]
    buffer.free()


def test_basic_loads_everything_before_the_forward(model, memory_store):
    prompt, _, buffer, token, log = cached_turn(model, memory_store, "basic", "pe")
    layers = range(TINY.num_layers)
    assert log == [("wait_layer", l) for l in layers] + [("put_layer", l, 0, len(prompt)) for l in layers]
    assert token == reference_generate(model, prompt, 1)[0]
    buffer.free()


def test_decode_times_out_on_an_incomplete_buffer(model, memory_store):
    buffer = BlockBuffer(memory_store.pool, memory_store.layout, 20)
    buffer.mark_layer_done(0)  # layers 1.. never arrive
    codec = LayerBlockCodec(TINY, BT)
    start = time.monotonic()
    with pytest.raises(TimedOut):
        decode(model, buffer, codec, np.arange(20), 1, 5, timeout_s=0.2)
    assert time.monotonic() - start < 2.0
    buffer.free()


def test_decode_writes_nothing_for_a_partial_block(model, memory_store):
    prompt = np.arange(20, dtype=np.int32)
    result = run_turn(model, memory_store, prompt, 5)  # 24 KV tokens: one full block of 16
    assert result.generated == reference_generate(model, prompt, 5)
    assert memory_store.num_stores == 1
    seq = np.concatenate([prompt, result.generated]).astype(np.int32)
    assert memory_store.match(memory_store.chain_keys(seq)) == 1


@pytest.mark.parametrize("mode,read_side", [("basic", "de"), ("fast", "pe"), ("dualpath", "x")])
def test_bad_modes_raise(model, memory_store, mode, read_side):
    buffer = BlockBuffer(memory_store.pool, memory_store.layout, 10)
    codec = LayerBlockCodec(TINY, BT)
    source = SlotSource(memory_store.pool, [])
    with pytest.raises(InvalidArgument):
        prefill(model, np.arange(10), source, BufferSink(buffer, codec), codec, mode, read_side)
    buffer.free()


def test_empty_prompt_raises(model, memory_store):
    codec = LayerBlockCodec(TINY, BT)
    buffer = BlockBuffer(memory_store.pool, memory_store.layout, 1)
    with pytest.raises(InvalidArgument):
        prefill(model, [], SlotSource(memory_store.pool, []), BufferSink(buffer, codec), codec)
    buffer.free()
