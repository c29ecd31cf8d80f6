"""vLLM's paged KV as Layer Blocks: where block b of layer l lives, and bulk copies to slots.

vLLM gives one tensor per attention layer whose leading dimension is the block (the CPU
backend: [num_blocks, kv_heads, block_size, 2 * head_size]; layouts "LBHNC"/"LBNHC"). A block's
page of one layer is then one contiguous run of `page_bytes`, which is exactly a Layer Block:
the store keeps those bytes as they are, so a block saved by this engine is read back layer by
layer without conversion by any dualkv reader with the same namespace.
"""
from __future__ import annotations

import numpy as np
import torch

from dualkv.errors import InvalidArgument
from dualkv.transfer.traffic import copy_ranges


def _layer_index(name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(name)


class PagedKV:
    def __init__(self, kv_caches: dict, num_blocks: int, page_bytes: int):
        self.layer_names = sorted(kv_caches, key=_layer_index)
        self.pages = [self._as_pages(name, kv_caches[name], num_blocks, page_bytes)
                      for name in self.layer_names]
        self.layer_of = {name: i for i, name in enumerate(self.layer_names)}
        self.device = self.pages[0].device
        self.page_bytes = page_bytes
        self.base_ptrs = np.array([p.data_ptr() for p in self.pages], np.int64)

    @property
    def num_layers(self) -> int:
        return len(self.pages)

    @property
    def is_host(self) -> bool:
        return self.device.type == "cpu"

    @staticmethod
    def _as_pages(name, kv: torch.Tensor, num_blocks: int, page_bytes: int) -> torch.Tensor:
        """(num_blocks, page_bytes) uint8 view of one layer, without copying."""
        nbytes = kv.numel() * kv.element_size()
        if nbytes != num_blocks * page_bytes or not kv.is_contiguous():
            raise InvalidArgument(
                f"{name}: KV tensor {tuple(kv.shape)} strides {kv.stride()} is not "
                f"{num_blocks} contiguous pages of {page_bytes} B; the dualkv connector needs a "
                f"block-major layout (kv_cache_layout LBHNC or LBNHC)")
        return kv.view(torch.uint8).view(num_blocks, page_bytes)

    def page_ptrs(self, block_ids: np.ndarray) -> np.ndarray:
        """(n, num_layers) int64 addresses of each block's page in each layer."""
        return (self.base_ptrs[None, :] + block_ids.astype(np.int64)[:, None] * self.page_bytes)

    def gather(self, layer: int, block_ids: torch.Tensor, slots: SlotPages, slot_ids) -> None:
        """Pool slots' Layer Block `layer` <- this layer's pages of block_ids (one batch)."""
        if self.is_host:  # one native copy per page, GIL released: runs beside the forward
            dst, src = slots.layer_ptrs(layer, slot_ids), self._layer_ptrs(layer, block_ids)
            copy_ranges(dst, src, np.full(len(dst), self.page_bytes, np.int64))
            return
        pages = self.pages[layer].index_select(0, block_ids.to(self.device))
        slots.layer(layer).index_copy_(0, slot_ids, pages.to("cpu"))

    def scatter(self, layer: int, block_ids: torch.Tensor, slots: SlotPages, slot_ids) -> None:
        """This layer's pages of block_ids <- pool slots' Layer Block `layer` (one batch)."""
        if self.is_host:
            dst, src = self._layer_ptrs(layer, block_ids), slots.layer_ptrs(layer, slot_ids)
            copy_ranges(dst, src, np.full(len(dst), self.page_bytes, np.int64))
            return
        rows = slots.layer(layer).index_select(0, slot_ids)
        self.pages[layer].index_copy_(0, block_ids.to(self.device),
                                      rows.to(self.device))

    def _layer_ptrs(self, layer: int, block_ids: torch.Tensor) -> np.ndarray:
        return self.base_ptrs[layer] + np.asarray(block_ids, np.int64) * self.page_bytes


class SlotPages:
    """Torch views of the store's host pool: Layer Block l of every slot as (num_slots, bytes).

    Built once over the pool's memory, so staging a batch of pages is one index copy per layer
    instead of one call per block.
    """

    def __init__(self, pool, layout):
        rows = pool.tensor()  # (num_slots, slot_bytes) uint8 over the pool, zero-copy
        self._layers = [rows[:, layout.layer_offset(l):layout.layer_offset(l) +
                             layout.layer_block_bytes] for l in range(layout.num_layers)]
        self._base_ptr, self._slot_bytes = pool.base_ptr, pool.slot_bytes
        self._layer_offsets = [layout.layer_offset(l) for l in range(layout.num_layers)]

    def layer(self, layer: int) -> torch.Tensor:
        return self._layers[layer]

    def layer_ptrs(self, layer: int, slot_ids) -> np.ndarray:
        """Addresses of Layer Block `layer` in each of these slots."""
        return (self._base_ptr + self._layer_offsets[layer] +
                np.asarray(slot_ids, np.int64) * self._slot_bytes)
