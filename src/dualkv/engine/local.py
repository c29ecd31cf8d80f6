"""One agentic turn end to end in one process: match → read → prefill → decode → write-back.

This is the wiring the cluster distributes over processes: here the PE buffer, the DE buffer
and the store's pool are all slots of `store.pool`, and the sink writes straight into the DE
buffer. `store` is a `dualkv.store.BlockStore` or anything with its batch API.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dualkv.engine.buffer import BlockBuffer
from dualkv.engine.decode import StoreWriteBack, decode
from dualkv.engine.kv import LayerBlockCodec
from dualkv.engine.model import Model
from dualkv.engine.prefill import prefill
from dualkv.engine.sources import BufferSink, SlotSource


@dataclass
class TurnResult:
    generated: list[int]      # first token from the prefill, the rest from the decode
    num_matched_blocks: int   # the store's prefix match
    num_cached_blocks: int    # of those, loaded intact and used
    ttft_s: float = 0.0       # match + read + prefill, until the first token and its KV landed
    decode_s: float = 0.0     # decode and write-back of the rest


def run_turn(model: Model, store, prompt, max_new_tokens: int, mode: str = "dualpath",
             read_side: str = "pe", timeout_s: float = 30.0) -> TurnResult:
    start = time.perf_counter()
    codec = LayerBlockCodec(model.cfg, store.layout.block_tokens)
    prompt = np.asarray(prompt, dtype=np.int32).reshape(-1)
    keys = store.chain_keys(prompt)
    num_matched = store.match(keys)
    de_buffer = BlockBuffer(store.pool, store.layout, len(prompt))
    try:
        if read_side == "de":  # the DE node reads the hit into its own buffer
            source = SlotSource.load(store, keys[:num_matched], de_buffer.slots[:num_matched])
        else:
            source = SlotSource.load(store, keys[:num_matched])
        try:
            first = prefill(model, prompt, source, BufferSink(de_buffer, codec), codec, mode,
                            read_side, timeout_s)
        finally:
            source.close()
        num_cached = source.num_blocks
        ttft = time.perf_counter() - start
        writeback = StoreWriteBack(store, codec, num_cached,
                                   keys[num_cached - 1] if num_cached else None)
        generated = decode(model, de_buffer, codec, prompt, first, max_new_tokens,
                           num_cached_blocks=num_cached, writeback=writeback,
                           timeout_s=timeout_s)
        writeback.finish(timeout_s)
    finally:
        de_buffer.free()
    return TurnResult(generated, num_matched, num_cached, ttft, time.perf_counter() - start - ttft)
