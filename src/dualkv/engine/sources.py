"""In-process `KVSource` / `KVSink`: hit blocks in pool slots, layer KV into a `BlockBuffer`.

pe read path: `SlotSource.load(store, ...)` reads the hit Full Blocks into PE-buffer slots;
the prefill copies Layer Block l out of them before layer l's attention, and a `BufferSink`
writes hit + new KV into the DE buffer. de read path: the hit blocks are loaded into the DE
buffer's own first slots (`SlotSource.load(store, ..., slots=buffer.slots[:n])`) and the sink
writes only the new tokens behind them. The seam for remote engines is in interfaces.py.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from dualkv.engine.buffer import BlockBuffer
from dualkv.engine.kv import LayerBlockCodec, byte_tensor
from dualkv.errors import TimedOut


class SlotSource:
    """A KVSource over Full Blocks in pool slots, optionally still being read by a store."""

    def __init__(self, pool, slots, *, store=None, handle=None, owns_slots=False):
        self.pool, self.slots = pool, np.asarray(slots, dtype=np.int64)
        self.store, self.handle, self.owns_slots = store, handle, owns_slots
        self.block_tokens = pool.layout.block_tokens
        self.num_blocks = None if handle is not None else len(self.slots)

    @classmethod
    def load(cls, store, keys, slots=None) -> SlotSource:
        """Starts reading the Full Blocks of `keys` into `slots` (fresh pool slots if None)."""
        owns = slots is None
        slots = store.pool.alloc(len(keys)) if owns else np.asarray(slots, dtype=np.int64)
        handle = store.load(keys, slots) if len(keys) else None
        return cls(store.pool, slots, store=store, handle=handle, owns_slots=owns)

    def prepare(self, deadline: float) -> int:
        if self.num_blocks is None:
            ok = self.store.wait(self.handle, max(0.0, deadline - time.monotonic()))
            self.store.release(self.handle)
            self.handle = None
            failed = np.flatnonzero(~np.asarray(ok, dtype=bool))
            self.num_blocks = int(failed[0]) if len(failed) else len(self.slots)
        return self.num_blocks * self.block_tokens

    def wait_layer(self, layer: int, deadline: float):
        if self.num_blocks is None:
            self.prepare(deadline)
        return [byte_tensor(self.pool.layer_view(int(s), layer))
                for s in self.slots[:self.num_blocks]]

    def release_layer(self, layer: int) -> None:
        pass  # slots are read in place and outlive the forward; nothing to recycle per layer

    def close(self) -> None:
        if self.handle is not None:  # abandoned before prepare: release waits for the read
            self.store.release(self.handle)
            self.handle = None
        if self.owns_slots and self.slots is not None:
            self.pool.free(self.slots)
        self.slots = np.empty(0, dtype=np.int64)
        self.owns_slots = False


class BufferSource:
    """A KVSource over the first tokens of a BlockBuffer (a chunked prefill's earlier chunks,
    already in the DE buffer). The count need not be whole blocks."""

    def __init__(self, buffer: BlockBuffer, num_tokens: int):
        self.buffer, self.num_tokens = buffer, num_tokens

    def prepare(self, deadline: float) -> int:
        return self.num_tokens

    def wait_layer(self, layer: int, deadline: float):
        num_blocks = -(-self.num_tokens // self.buffer.layout.block_tokens)
        return [byte_tensor(v) for v in self.buffer.layer_views(layer, 0, num_blocks)]

    def release_layer(self, layer: int) -> None:
        pass

    def close(self) -> None:
        pass


class BufferSink:
    """A KVSink writing layer KV into a BlockBuffer on a worker thread, overlapping compute."""

    def __init__(self, buffer: BlockBuffer, codec: LayerBlockCodec):
        self.buffer, self.codec = buffer, codec
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualkv-sink")
        self._pending = []

    def put_layer(self, layer: int, kv, first_token: int) -> None:
        self._pending.append(self._worker.submit(self._write, layer, kv, first_token))

    def _write(self, layer, kv, first_token):
        self.codec.scatter(kv, self.buffer.layer_views(layer), first_token)
        self.buffer.mark_layer_done(layer, first_token + kv.shape[0])

    def finish(self, deadline: float) -> None:
        done, not_done = wait(self._pending, timeout=max(0.0, deadline - time.monotonic()))
        if not_done:
            raise TimedOut(f"{len(not_done)} of {len(self._pending)} layer puts unfinished")
        self._pending = []
        self._worker.shutdown(wait=False)
        for future in done:
            future.result()  # re-raises the first failed put
