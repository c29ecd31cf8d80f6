"""Drives SGLang's real HiCacheController storage threads (backup, prefetch) on CPU.

The controller, its threads, queues, hit query and page I/O are SGLang's own. What stands in
for the GPU server is only what the storage path never reads: a device-pool object with the
three attributes the constructor touches, one parallel rank, and the scheduler's part of a
prefetch (allocate host slots for the hit, queue the transfer), done here as the radix cache
does it.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time

import torch

from sglang.srt.managers.cache_controller import HiCacheController
from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool
from sglang.srt.mem_cache.utils import get_hash_str
from sglang.srt.runtime_context import get_parallel

DEADLINE_S = 60.0


class _DevicePool:
    device = torch.device("cpu")

    def __init__(self, layer_num: int):
        self.layer_num = layer_num

    def register_layer_transfer_counter(self, counter):
        self.layer_transfer_counter = counter


class _MLADevicePool(MLATokenToKVPool):
    """Only its type matters: SGLang decides 'MLA model' by isinstance on the device pool."""

    device = torch.device("cpu")

    def __init__(self, layer_num: int):  # no device buffers: the storage path never reads them
        self.layer_num = layer_num

    def register_layer_transfer_counter(self, counter):
        self.layer_transfer_counter = counter


class _Allocator:
    def __init__(self, device_pool):
        self.device_pool = device_pool

    def get_kvcache(self):
        return self.device_pool


@contextlib.contextmanager
def one_rank(tp_rank: int = 0, tp_size: int = 1):
    with get_parallel().override(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1,
                                 attn_dcp_size=1, attn_dcp_rank=0):
        yield


def page_keys_of(tokens, page_size: int) -> list:
    """SGLang's page keys for a token list (its SHA-256 chain, computed by SGLang)."""
    return get_hash_str(tokens, None, page_size=page_size)


class ControllerHarness:
    """`hybrid=True` builds SGLang's HybridCacheController over a one-entry HostPoolGroup: what
    the server itself builds for a plain (KV-only) model; otherwise the base controller."""

    def __init__(self, pool, kind: str, backend: str, extra_config: dict | None,
                 model_name: str = "test-model", hybrid: bool = False):
        device = _MLADevicePool(pool.layer_num) if kind == "mla" else _DevicePool(pool.layer_num)
        self.pool = pool
        self.page_size = pool.page_size
        self.hybrid = hybrid
        host = _kv_only_group(pool, device) if hybrid else pool
        controller_class = _hybrid_controller_class() if hybrid else HiCacheController
        self.controller = controller_class(
            _Allocator(device), host, pool.page_size, tp_group=None,
            load_cache_event=threading.Event(), io_backend="direct", storage_backend=backend,
            prefetch_threshold=pool.page_size, model_name=model_name,
            storage_backend_extra_config=dict(extra_config or {}))
        self.backend = self.controller.storage_backend

    def backup(self, host_indices, tokens) -> int:
        """Backs up pages through the backup thread; returns tokens it reports stored."""
        keys = page_keys_of(tokens, self.page_size)
        op_id = self.controller.write_storage(host_indices, tokens, keys)
        op = self._get(self.controller.ack_backup_queue)
        assert op.id == op_id
        return op.completed_tokens

    def prefetch(self, tokens, rid: str = "req"):
        """Runs a prefetch through the hit-query, I/O and sync threads. Returns (hit tokens
        from the query, tokens completed by the transfer, host indices they landed in)."""
        if self.hybrid:
            from sglang.srt.mem_cache.base_prefix_cache import CacheRequestHandle

            self.controller.prefetch(CacheRequestHandle(rid=rid, attempt_id=0), tokens)
        else:
            self.controller.prefetch(rid, tokens)
        op = self._get(self.controller.prefetch_hit_queue)
        hit = op.storage_hit_count
        if hit == 0:  # a miss: the scheduler revokes it, no transfer and no acks follow
            return 0, 0, None
        host_indices = self.pool.alloc(hit)
        assert host_indices is not None, "host pool too small for the test"
        op.host_indices = host_indices
        self.controller.prefetch_buffer.put(op)
        return hit, self._drain_acks(rid), host_indices

    def _drain_acks(self, rid: str) -> int:
        completed = 0
        while True:
            ack = self._get(self.controller.ack_prefetch_queue)
            assert ack.rid == rid
            if ack.completed_tokens is not None:
                completed = ack.completed_tokens
            if ack.completed_req:
                return completed

    @staticmethod
    def _get(q: queue.Queue):
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                return q.get(timeout=0.5)
            except queue.Empty:
                continue
        raise TimeoutError("the controller thread did not answer in time")

    def close(self):
        self.controller.detach_storage_backend()


def _kv_only_group(pool, device_pool):
    from sglang.srt.mem_cache.hicache_storage import PoolName
    from sglang.srt.mem_cache.pool_host.group import HostPoolGroup, PoolEntry

    return HostPoolGroup([PoolEntry(PoolName.KV, pool, device_pool, layer_mapper=lambda i: i,
                                    is_primary_index_anchor=True)])


def _hybrid_controller_class():
    from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController

    return HybridCacheController


def fill_random(pool, host_indices, seed: int) -> list:
    """Writes random bytes into the pages at host_indices; returns each page's flat bytes."""
    gen = torch.Generator().manual_seed(seed)
    pages = []
    for start in host_indices[:: pool.page_size].tolist():
        flat = pool.get_dummy_flat_data_page()
        raw = flat.view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=gen))
        pool.set_from_flat_data_page(start, flat)
        pages.append(flat.view(torch.uint8).clone())
    return pages


def read_pages(pool, host_indices) -> list:
    return [pool.get_data_page(start, flat=True).contiguous().view(torch.uint8).clone()
            for start in host_indices[:: pool.page_size].tolist()]
