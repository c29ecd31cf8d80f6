"""Host buffers of the engines: Full Blocks in pool slots.

`BlockBuffer` is one request's prompt KV in a node buffer (the DE buffer, or the PE buffer of
the pe read path): ceil(tokens / block_tokens) slots of a pool, Layer Block l of block b at
`layout.layer_offset(l)` of slot b — the same bytes a storage read lands and a store write
takes, so filling it from storage, from a PE, and writing it back never converts anything.
The pool is the store's `HostPool` (`store.pool`), or any object with its slot API (alloc,
free, layer_view); the tests use `dualkv.testing.memory_pool.MemoryPool`, a numpy pool, to run
engines without the native store.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from dualkv.errors import InvalidArgument, TimedOut
from dualkv.layout import KVLayout


class BlockBuffer:
    """One request's KV for tokens [0, num_tokens) in pool slots, with per-layer completion."""

    def __init__(self, pool, layout: KVLayout, num_tokens: int, slots=None):
        if num_tokens <= 0:
            raise InvalidArgument(f"a buffer needs a positive token count, got {num_tokens}")
        self.pool, self.layout, self.num_tokens = pool, layout, num_tokens
        self.num_blocks = -(-num_tokens // layout.block_tokens)
        self.slots = pool.alloc(self.num_blocks) if slots is None else np.asarray(slots, np.int64)
        if len(self.slots) != self.num_blocks:
            raise InvalidArgument(f"{num_tokens} tokens need {self.num_blocks} slots")
        self._landed = [0] * layout.num_layers  # per layer: KV present for tokens [0, n)
        self._cond = threading.Condition()

    def layer_views(self, layer: int, first_block: int = 0, end_block: int | None = None):
        """Layer Block byte views of blocks [first_block, end_block) (zero-copy)."""
        end_block = self.num_blocks if end_block is None else end_block
        return [self.pool.layer_view(int(s), layer) for s in self.slots[first_block:end_block]]

    def mark_layer_done(self, layer: int, end_token: int | None = None) -> None:
        """Layer `layer` now holds tokens [0, end_token) (default: all of them)."""
        end_token = self.num_tokens if end_token is None else end_token
        with self._cond:
            self._landed[layer] = max(self._landed[layer], end_token)
            self._cond.notify_all()

    def is_complete(self) -> bool:
        return min(self._landed) >= self.num_tokens

    def wait_complete(self, deadline: float) -> None:
        """Blocks until every layer holds every token, or raises TimedOut at `deadline`."""
        with self._cond:
            while not self.is_complete():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut(f"buffer layers hold {self._landed} of {self.num_tokens} tokens")
                self._cond.wait(left)

    def free(self) -> None:
        if self.slots is not None:
            self.pool.free(self.slots)
            self.slots = None
