"""Where an SGLang host-pool page lies in memory, as dualkv Layer Blocks.

A page of SGLang's host KV pool is a few contiguous regions of the pool's one tensor
(`get_page_buffer_meta` lists them). dualkv stores a page as one Full Block whose Layer
Blocks are exactly those regions, so a page moves between disk and the pool with no copy:
the store reads each region straight to its address.

The regions are cut as finely as the layout allows, in the order of the pool's own flat page
(`get_data_page(flat=True)`), so the stored bytes are also SGLang's flat page:
- MHA `layer_first` and `page_first_direct`: 2 x layers regions, K then V, layer by layer,
  each `page_tokens x heads x head_dim` (byte order "kv-layer-token"). Both layouts store the
  same bytes, so either can read what the other wrote, and a Layer Block is one layer's K or V
  (what layerwise streaming wants).
- MHA `page_first` ("kv-token-layer") and `page_head` ("kv-head-token-layer"): K and V, one
  region each (token- or head-major inside, so they cannot be cut per layer without a copy).
- MLA `layer_first` and `page_first_direct`: one region per layer ("layer-token");
  MLA `page_first`: one region ("token-layer").
The byte order is part of the key namespace, so a pool never reads a page stored in another
order. The offsets come from the pool tensor's strides and are checked against
`get_page_buffer_meta` when the pool registers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualkv.errors import InvalidArgument
from dualkv.layout import PAGE_BYTES, KVLayout

# (pool kind, host layout) -> (byte order, axes of kv_buffer: which one is the page axis, which
# enumerate regions). "tok" = a token axis (page offset = first_token * stride), "page" = a
# page axis (offset = page number * stride); region axes are enumerated outermost first.
_LAYOUTS = {
    ("mha", "layer_first"): ("kv-layer-token", "tok", 2, (0, 1)),
    ("mha", "page_first_direct"): ("kv-layer-token", "page", 1, (0, 2)),
    ("mha", "page_first"): ("kv-token-layer", "tok", 1, (0,)),
    ("mha", "page_head"): ("kv-head-token-layer", "page", 1, (0,)),
    ("mla", "layer_first"): ("layer-token", "tok", 1, (0,)),
    ("mla", "page_first_direct"): ("layer-token", "page", 0, (1,)),
    ("mla", "page_first"): ("token-layer", "tok", 0, ()),
}


@dataclass(frozen=True)
class PageGeometry:
    kind: str  # "mha" | "mla"
    host_layout: str
    byte_order: str
    dtype: str
    page_tokens: int
    region_bytes: int
    base_ptr: int
    page_stride_bytes: int  # distance between consecutive pages of the pool
    region_offsets: tuple  # byte offset of each region from the page's start

    @property
    def num_regions(self) -> int:
        return len(self.region_offsets)

    @property
    def page_bytes(self) -> int:
        return self.num_regions * self.region_bytes

    def kv_layout(self) -> KVLayout:
        """The store layout: one Layer Block per region."""
        return KVLayout(self.num_regions, self.region_bytes // self.page_tokens, self.page_tokens)

    def namespace_tag(self) -> str:
        """Names the stored byte format; goes into the store's model id."""
        return f"sglang-{self.kind}-{self.byte_order}-{self.dtype}"

    def can_direct_io(self) -> bool:
        """Whether every region address and size allows O_DIRECT straight to the pool."""
        values = (self.base_ptr, self.page_stride_bytes, self.region_bytes, *self.region_offsets)
        return all(v % PAGE_BYTES == 0 for v in values)

    def page_ptrs(self, first_tokens: np.ndarray) -> np.ndarray:
        """(n, num_regions) int64 addresses of the pages starting at these token slots."""
        first_tokens = np.asarray(first_tokens, dtype=np.int64)
        if np.any(first_tokens % self.page_tokens) or np.any(first_tokens < 0):
            raise InvalidArgument("host indices do not start on page boundaries")
        pages = first_tokens // self.page_tokens
        starts = self.base_ptr + pages * self.page_stride_bytes
        offsets = np.asarray(self.region_offsets, dtype=np.int64)
        return np.ascontiguousarray(starts[:, None] + offsets[None, :])

    def buffer_ptrs(self, base_ptrs: np.ndarray) -> np.ndarray:
        """(n, num_regions) addresses inside contiguous flat pages (SGLang's generic path)."""
        steps = np.arange(self.num_regions, dtype=np.int64) * self.region_bytes
        return np.ascontiguousarray(np.asarray(base_ptrs, np.int64)[:, None] + steps[None, :])


def pool_kind(pool) -> str:
    """"mla" for SGLang's MLA host pools, "mha" for MHA ones (by their class, not their name)."""
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

    # Exact classes: subclasses (asymmetric K/V widths, sparse pools) lay pages out otherwise.
    if type(pool) is MLATokenToKVPoolHost:
        return "mla"
    if type(pool) is MHATokenToKVPoolHost:
        return "mha"
    raise InvalidArgument(f"dualkv stores MHA and MLA host pools, not {type(pool).__name__}")


def geometry_of(pool) -> PageGeometry:
    """Derives the page geometry of an SGLang host pool and checks it against the pool."""
    kind = pool_kind(pool)
    key = (kind, pool.layout)
    if key not in _LAYOUTS:
        supported = sorted(layout for k, layout in _LAYOUTS if k == kind)
        raise InvalidArgument(f"{kind} host layout {pool.layout!r} is not supported; "
                              f"use one of {supported}")
    if getattr(pool, "dcp_size", 1) != 1:
        raise InvalidArgument("decode context parallel (dcp_size > 1) is not supported")
    byte_order, page_axis_kind, page_axis, region_axes = _LAYOUTS[key]
    buffer = pool.kv_buffer
    item = buffer.element_size()
    strides = [s * item for s in buffer.stride()]
    page_stride = strides[page_axis] * (pool.page_size if page_axis_kind == "tok" else 1)
    offsets = [0]
    for axis in region_axes:  # outermost first, so offsets come out in flat-page order
        offsets = [o + i * strides[axis] for o in offsets for i in range(buffer.shape[axis])]
    page_bytes = _flat_page_bytes(pool)
    geometry = PageGeometry(kind, pool.layout, byte_order, str(buffer.dtype).removeprefix("torch."),
                            pool.page_size, page_bytes // len(offsets), buffer.data_ptr(),
                            page_stride, tuple(offsets))
    _check_against_pool(pool, geometry)
    return geometry


def _flat_page_bytes(pool) -> int:
    page = pool.get_dummy_flat_data_page()
    return page.numel() * page.element_size()


def _check_against_pool(pool, geometry: PageGeometry) -> None:
    """Our regions must cover exactly the byte ranges SGLang's own metadata gives for a page."""
    import torch

    num_pages = min(2, pool.page_num)
    indices = torch.arange(num_pages * pool.page_size, dtype=torch.int64)
    ptrs, sizes = pool.get_page_buffer_meta(indices)
    theirs = _merge((int(p), int(p) + int(s)) for p, s in zip(ptrs, sizes))
    first_tokens = np.arange(num_pages, dtype=np.int64) * pool.page_size
    ours = _merge((int(p), int(p) + geometry.region_bytes)
                  for p in geometry.page_ptrs(first_tokens).ravel())
    if ours != theirs:
        raise InvalidArgument(f"dualkv's page geometry for {geometry.kind} {geometry.host_layout} "
                              "disagrees with the pool's get_page_buffer_meta; this SGLang "
                              "version lays pages out differently")


def _merge(ranges) -> list:
    merged: list = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
