"""HostPool: page-aligned host memory cut into slots of one Full Block each.

The memory is allocated and freed by the C++ core (`dualkv._C.HostPool`); this wrapper hands
out zero-copy numpy views (and torch tensors when torch is installed) of the whole pool, of a
slot, or of one Layer Block in a slot. Register the same memory elsewhere (UCX, CUDA) through
`base_ptr` / `size_bytes` / `ptr(slot)`.
"""
from __future__ import annotations

import numpy as np

from dualkv._native import C
from dualkv.errors import InvalidArgument
from dualkv.layout import KVLayout
from dualkv.store.args import is_integer


class HostPool:
    def __init__(self, layout: KVLayout, num_slots: int, huge_pages: bool = True,
                 cuda: str = "auto"):
        """`cuda`: "auto" registers with CUDA when a device is present, "off", or "required"."""
        if not isinstance(num_slots, int) or num_slots <= 0:
            raise InvalidArgument(f"num_slots must be a positive int, got {num_slots!r}")
        self.layout = layout
        self.native = C.HostPool(num_slots, layout.full_block_bytes, huge_pages, cuda)
        self._array = np.frombuffer(self.native, dtype=np.uint8).reshape(
            num_slots, layout.full_block_bytes)

    @property
    def num_slots(self) -> int:
        return self.native.num_slots

    @property
    def num_free(self) -> int:
        return self.native.num_free

    @property
    def slot_bytes(self) -> int:
        return self.native.slot_bytes

    @property
    def base_ptr(self) -> int:
        return self.native.base_ptr

    @property
    def size_bytes(self) -> int:
        """Bytes mapped (a whole number of pages), for registering the pool elsewhere."""
        return self.native.size_bytes

    @property
    def page_kind(self) -> str:
        """"hugetlb-2MiB", "4KiB+THP" (transparent huge pages requested) or "4KiB"."""
        return self.native.page_kind

    @property
    def is_cuda_registered(self) -> bool:
        return self.native.is_cuda_registered

    def alloc(self, n: int) -> np.ndarray:
        """n free slot ids (int64), all or none: raises OutOfMemory when fewer are free."""
        if not is_integer(n):
            raise InvalidArgument(f"alloc takes an integer count, got {n!r}")
        return self.native.alloc(int(n))

    def free(self, ids) -> None:
        """Frees slot ids (integers; a float is never rounded to a slot)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise InvalidArgument(f"slot ids must be integers, got {ids.dtype}")
        self.native.free(np.ascontiguousarray(ids, dtype=np.int64))

    def array(self) -> np.ndarray:
        """The whole pool as a (num_slots, slot_bytes) uint8 array, zero-copy."""
        return self._array

    def view(self, slot: int) -> np.ndarray:
        """One slot (header page + padded Layer Blocks) as uint8, zero-copy."""
        return self._array[self._check(slot)]

    def layer_view(self, slot: int, layer: int) -> np.ndarray:
        """Layer Block `layer` of a slot: its `layer_block_bytes` packed bytes, zero-copy."""
        if not 0 <= layer < self.layout.num_layers:
            raise InvalidArgument(f"layer {layer} outside 0..{self.layout.num_layers - 1}")
        start = self.layout.layer_offset(layer)
        return self._array[self._check(slot), start:start + self.layout.layer_block_bytes]

    def ptr(self, slot: int) -> int:
        return self.native.ptr(self._check(slot))

    def layer_ptr(self, slot: int, layer: int) -> int:
        return self.ptr(slot) + self.layout.layer_offset(layer)

    def tensor(self, slot: int | None = None):
        """A torch uint8 tensor over one slot (or the whole pool), sharing its memory."""
        import torch

        data = self._array if slot is None else self.view(slot)
        return torch.from_numpy(data)

    def stats(self) -> dict:
        return {"num_slots": self.num_slots, "num_free": self.num_free,
                "slot_bytes": self.slot_bytes, "size_bytes": self.size_bytes,
                "page_kind": self.page_kind, "cuda": self.native.cuda_note}

    def _check(self, slot) -> int:
        if isinstance(slot, (bool, np.bool_)) or not isinstance(slot, (int, np.integer)):
            raise InvalidArgument(f"slot must be an int, got {slot!r}")
        if not 0 <= slot < self.num_slots:
            raise InvalidArgument(f"slot {slot} outside the pool's 0..{self.num_slots - 1}")
        return int(slot)

