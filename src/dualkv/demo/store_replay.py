"""Replay an agentic conversation trace through the block store, then read it back like fio.

Every request of the trace (Mooncake's conversation trace by default) is keyed block by block;
its stored prefix is loaded (and checked byte for byte), the rest of its Full Blocks are written
back. The figures: the block hit ratio the trace allows, the store's read and write GB/s, and
a cold re-read of the same files by the store and by fio (io_uring, O_DIRECT, same block size
and queue depth) side by side.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

import numpy as np

from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig
from dualkv.workloads.mooncake import TraceRequest, request_tokens

PATTERN_BYTES = 32  # every Layer Block is filled with its block key, so a load is checkable


@dataclass
class ReplayFigures:
    num_requests: int = 0
    blocks_seen: int = 0
    blocks_hit: int = 0
    bytes_loaded: int = 0
    bytes_stored: int = 0
    load_seconds: float = 0.0
    store_seconds: float = 0.0
    wrong_blocks: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.blocks_hit / max(self.blocks_seen, 1)


def fill_with_keys(store: BlockStore, slots: np.ndarray, keys: np.ndarray) -> None:
    """Writes each block's key, repeated, over its payload (the header page is the store's)."""
    layout, views = store.layout, store.pool.array()
    payload = layout.full_block_bytes - layout.header_bytes
    for slot, key in zip(slots, keys):
        views[slot, layout.header_bytes:] = np.resize(key, payload)


def count_wrong(store: BlockStore, slots: np.ndarray, keys: np.ndarray) -> int:
    layout, views = store.layout, store.pool.array()
    wrong = 0
    for slot, key in zip(slots, keys):
        for layer in range(layout.num_layers):
            start = layout.layer_offset(layer)
            wrong += not np.array_equal(views[slot, start:start + PATTERN_BYTES], key)
    return wrong


def replay(store: BlockStore, requests: list[TraceRequest], batch: int,
           progress=None) -> ReplayFigures:
    """Loads each request's stored prefix and stores its missing blocks, `batch` at a time."""
    figures = ReplayFigures()
    slots = store.pool.alloc(batch)
    block_bytes = store.layout.full_block_bytes
    for request in requests:
        keys = store.chain_keys(request_tokens(request))
        hit = store.match(keys)
        figures.num_requests += 1
        figures.blocks_seen += len(keys)
        figures.blocks_hit += hit
        for first in range(0, hit, batch):
            chunk = keys[first:min(first + batch, hit)]
            start = time.perf_counter()
            ok = store.wait(store.load(chunk, slots[:len(chunk)]), timeout=120)
            figures.load_seconds += time.perf_counter() - start
            figures.bytes_loaded += int(ok.sum()) * block_bytes
            figures.wrong_blocks += count_wrong(store, slots[:len(chunk)][ok], chunk[ok])
        for first in range(hit, len(keys), batch):
            chunk = keys[first:first + batch]
            fill_with_keys(store, slots[:len(chunk)], chunk)
            parent = keys[first - 1] if first else None
            start = time.perf_counter()
            store.wait(store.store(chunk, slots[:len(chunk)], parent=parent), timeout=120)
            figures.store_seconds += time.perf_counter() - start
            figures.bytes_stored += len(chunk) * block_bytes
        if progress is not None:
            progress.update(1)
    store.pool.free(slots)
    return figures


def cold_reread(root: str, layout: KVLayout, keys: np.ndarray, depth: int, workdir: str,
                with_fio: bool) -> dict:
    """GB/s of the store re-reading `keys` cold (its own bench reader, two batches of `depth`
    in flight), and of fio over the very same files with the same block size and depth, its
    buffers on the same kind of pages as the store's pool (`bench/fio.py`)."""
    from dualkv.bench import fio
    from dualkv.bench.storage import drop_caches, read_dualkv

    drop_caches()
    seconds, _, page_kind = read_dualkv(root, layout, keys, depth, "auto")
    result = {"reread_gbps": len(keys) * layout.full_block_bytes / seconds / 1e9,
              "fio_gbps": None, "pages": page_kind}
    if with_fio:
        with BlockStore(StoreConfig(root, layout, pool_slots=1, cuda="off")) as store:
            paths = [store.io.path_of(k.tobytes()) for k in keys]
        folder = fio.link_files(paths, workdir)
        buffers = fio.FioBuffers(page_kind, depth * layout.full_block_bytes)
        try:
            if buffers.args is not None:
                drop_caches()
                result["fio_gbps"] = fio.read_bytes_per_s(
                    folder, len(keys), layout.full_block_bytes, depth, buffers.args) / 1e9
                result["ref_pages"] = buffers.ref_pages
        finally:
            buffers.close()
            shutil.rmtree(folder, ignore_errors=True)
    return result


def demo_layout() -> KVLayout:
    """16 layers × 512 tokens × 32 B: Full Blocks of 260 KiB at the trace's own 512-token
    granularity, so a few hundred requests make a store of a few GB in a minute or two."""
    return KVLayout(num_layers=16, bytes_per_token_layer=32, block_tokens=512)


def open_store(root: str, layout: KVLayout, batch: int) -> BlockStore:
    return BlockStore(StoreConfig(root, layout, pool_slots=2 * batch, queue_depth=batch,
                                  cuda="off"))
