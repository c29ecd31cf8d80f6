"""MemoryPool: HostPool's slot API over one page-aligned numpy array, for engines run without
the native store (tests)."""
from __future__ import annotations

import threading

import numpy as np

from dualkv.errors import InvalidArgument, OutOfMemory
from dualkv.layout import PAGE_BYTES, KVLayout


class MemoryPool:
    """Slots of `layout.full_block_bytes` in one page-aligned numpy array (HostPool's API)."""

    def __init__(self, layout: KVLayout, num_slots: int):
        if num_slots <= 0:
            raise InvalidArgument(f"a pool needs at least one slot, got {num_slots}")
        self.layout, self.num_slots = layout, num_slots
        raw = np.zeros(num_slots * layout.full_block_bytes + PAGE_BYTES, dtype=np.uint8)
        start = (-raw.ctypes.data) % PAGE_BYTES
        self._memory = raw[start:start + num_slots * layout.full_block_bytes]
        self._free = list(range(num_slots - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def base_ptr(self) -> int:
        return self._memory.ctypes.data

    @property
    def size_bytes(self) -> int:
        return self._memory.nbytes

    def ptr(self, slot: int) -> int:
        self._check(slot)
        return self.base_ptr + slot * self.layout.full_block_bytes

    def alloc(self, n: int) -> np.ndarray:
        with self._lock:
            if n > len(self._free):
                raise OutOfMemory(f"pool has {len(self._free)} free slots, {n} wanted")
            return np.array([self._free.pop() for _ in range(n)], dtype=np.int64)

    def free(self, ids) -> None:
        with self._lock:
            for slot in np.asarray(ids, dtype=np.int64).reshape(-1):
                self._check(int(slot))
                self._free.append(int(slot))

    def view(self, slot: int) -> np.ndarray:
        self._check(slot)
        size = self.layout.full_block_bytes
        return self._memory[slot * size:(slot + 1) * size]

    def layer_view(self, slot: int, layer: int) -> np.ndarray:
        offset = self.layout.layer_offset(layer)
        return self.view(slot)[offset:offset + self.layout.layer_block_bytes]

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise InvalidArgument(f"slot {slot} outside 0..{self.num_slots - 1}")
