"""dualkv's block store as SGLang's HiCache L3 tier (`DualKVHiCacheStorage`).

Launch SGLang with
    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "dualkv",
      "module_path": "dualkv.integrations.sglang", "class_name": "DualKVHiCacheStorage",
      "interface_v1": 1, "root": "/path/to/blocks"}'
docs/sglang.md lists every key. A page of SGLang's host pool is one Full Block of the store
whose Layer Blocks are the page's regions in the pool (sglang_pages), so `batch_get_v1` /
`batch_set_v1` move pages between disk and the pool with one native call per batch and no
copy; pages whose addresses or sizes do not allow O_DIRECT go through the store's registered
slots, and `get_stats()` says which path ran. No method raises into SGLang's controller
threads: a failed, missing or corrupt page is False (or None), logged once. A read-only root
whose namespace no writer has created yet attaches anyway (misses, False sets) and opens the
namespace once it appears.
"""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np

from dualkv.integrations.sglang_config import (SGLangBackendConfig, block_store_config,
                                               page_keys)
from dualkv.integrations.sglang_pages import PageGeometry, geometry_of
from dualkv.integrations.sglang_stats import PageStats, logger
from dualkv.layout import PAGE_BYTES
from dualkv.store.config import META_NAME
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, PoolName, PoolTransferResult

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
REOPEN_INTERVAL_S = 5.0  # a read-only attach retries opening its namespace at most this often


class DualKVHiCacheStorage(HiCacheStorage):
    def __init__(self, storage_config, kwargs=None):
        self.storage_config = storage_config
        self.config = SGLangBackendConfig.from_extra_config(storage_config.extra_config)
        self.is_writer = storage_config.is_storage_writer
        self.stats = PageStats()
        self.geometry: PageGeometry | None = None
        self.store = None  # also None after registration on a read-only root without namespace
        self.mem_pool_host = None
        self._open_lock = threading.Lock()
        self._next_open_s = 0.0

    # -- registration: the store opens once the host pool tells the page geometry ------------
    def register_mem_pool_host(self, mem_pool_host):
        super().register_mem_pool_host(mem_pool_host)
        geometry = geometry_of(mem_pool_host)
        if self.geometry is not None:
            if geometry.kv_layout() != self.geometry.kv_layout():
                raise ValueError("dualkv: a second host pool with another page geometry")
            self.geometry = geometry  # same format, maybe another buffer: use its addresses
            return
        self.geometry = geometry
        self.stats.page_bytes = geometry.page_bytes
        self.store = self._open_store(geometry)

    def register_mem_host_pool_v2(self, host_pool, host_pool_name):
        super().register_mem_host_pool_v2(host_pool, host_pool_name)
        if str(host_pool_name) == "kv" and self.geometry is None:
            self.register_mem_pool_host(host_pool)
        elif str(host_pool_name) != "kv":
            self.stats.log_once(f"pool:{host_pool_name}", "dualkv: host pool %r is not "
                                "persisted (only the KV pool is)", str(host_pool_name))

    def on_host_pools_registered(self) -> None:
        if self.geometry is None:
            raise ValueError("dualkv: no KV host pool was registered")

    def _open_store(self, geometry: PageGeometry):
        """The block store; None where the root is read-only here (EROFS, EACCES, EPERM) and no
        writer has created this namespace yet: gets miss and sets fail until a later call
        finds it (`_attached_store`)."""
        from dualkv.errors import StorageError
        from dualkv.store import BlockStore

        store_config = block_store_config(self.storage_config, self.config, geometry)
        self._next_open_s = time.monotonic() + REOPEN_INTERVAL_S
        try:
            store = BlockStore(store_config)
        except StorageError as exc:
            meta = os.path.join(store_config.directory, META_NAME)
            if exc.errno not in READ_ONLY_ERRNOS or os.path.exists(meta):
                raise
            self.stats.log_once(
                "read-only-root", "dualkv: root %s is not writable here ([Errno %d] %s) and "
                "namespace %s (model %r, rank %r) is not in it yet: attached read-only, every "
                "get is a miss and every set returns False; re-checked every %g s until a "
                "writer creates it", store_config.root, exc.errno, os.strerror(exc.errno),
                store_config.namespace_bytes.hex(), store_config.model_id, store_config.rank,
                REOPEN_INTERVAL_S)
            return None
        if not os.access(store.directory, os.W_OK):
            logger.warning("dualkv: %s is not writable here (read-only filesystem or no write "
                           "permission): its pages are read, sets return False", store.directory)
        self.stats.store_backend = store.backend
        return store

    def _attached_store(self):
        """The store; on a read-only attach, retries opening it at most every
        REOPEN_INTERVAL_S (one thread at a time), so a namespace created later is read."""
        if self.store is not None or time.monotonic() < self._next_open_s:
            return self.store
        if not self._open_lock.acquire(blocking=False):
            return None  # another thread is opening it right now
        try:
            if self.store is None and self.geometry is not None:
                self.store = self._open_store(self.geometry)
                if self.store is not None:
                    logger.info("dualkv: namespace %s appeared; reading its pages now",
                                self.store.directory)
        finally:
            self._open_lock.release()
        return self.store

    # -- zero-copy page I/O (interface_v1) ----------------------------------------------------
    def batch_get_v1(self, keys, host_indices, extra_info=None) -> list:
        return self._guarded("batch_get_v1", len(keys), lambda: self._load(
            keys, self._pool_ptrs(keys, host_indices), self._is_pool_direct()))

    def batch_set_v1(self, keys, host_indices, extra_info=None) -> list:
        if not self.is_writer:
            return [True] * len(keys)  # MLA: the storage-writer rank stores the same page
        return self._guarded("batch_set_v1", len(keys), lambda: self._store_pages(
            keys, self._pool_ptrs(keys, host_indices), extra_info))

    def _pool_ptrs(self, keys, host_indices) -> np.ndarray:
        indices = np.asarray(host_indices.cpu() if hasattr(host_indices, "cpu")
                             else host_indices, dtype=np.int64).reshape(-1)
        page = self.geometry.page_tokens
        if indices.size != len(keys) * page:
            raise ValueError(f"{indices.size} host indices for {len(keys)} pages of {page}")
        return self.geometry.page_ptrs(indices[::page])

    def _is_pool_direct(self) -> bool:
        return self.geometry.can_direct_io()

    # -- the generic interface (SGLang without interface_v1): flat pages as tensors ---------
    def get(self, key, target_location=None, target_sizes=None):
        return self.batch_get([key], [target_location])[0]

    def batch_get(self, keys, target_locations=None, target_sizes=None) -> list:
        def run():
            targets = [self._flat_page(t) for t in (target_locations or [None] * len(keys))]
            ok = self._load(keys, *self._tensor_ptrs(targets))
            return [t if hit else None for t, hit in zip(targets, ok)]
        return self._guarded("batch_get", len(keys), run, failed=None)

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        if not self.is_writer:
            return True
        def run():
            pages = [self._flat_page(v, must_exist=True).contiguous() for v in values]
            return self._store_pages(keys, self._tensor_ptrs(pages)[0], None)
        return all(self._guarded("batch_set", len(keys), run))

    def _flat_page(self, tensor, must_exist=False):
        if tensor is None and not must_exist:
            return self.mem_pool_host.get_dummy_flat_data_page()
        if tensor is None or tensor.numel() * tensor.element_size() != self.geometry.page_bytes:
            raise ValueError(f"a flat page must hold {self.geometry.page_bytes} bytes")
        return tensor

    def _tensor_ptrs(self, tensors) -> tuple:
        """Region addresses inside flat pages, and whether they all allow O_DIRECT."""
        bases = np.array([t.data_ptr() for t in tensors], dtype=np.int64)
        ptrs = self.geometry.buffer_ptrs(bases)
        is_direct = self.geometry.region_bytes % PAGE_BYTES == 0 and np.all(ptrs % PAGE_BYTES == 0)
        return ptrs, bool(is_direct)

    # -- SGLang's per-pool (v2) calls: the KV pool as above; side pools are not stored -------
    def batch_exists_v2(self, keys, pool_transfers=None, extra_info=None):
        if pool_transfers:  # a hit needs every side pool too, and none is stored here
            return PoolTransferResult.empty()
        num_hit = self.batch_exists(keys, extra_info)
        return PoolTransferResult(num_hit, {PoolName.KV: num_hit} if num_hit else {},
                                  list(range(1, num_hit + 1)))

    def batch_get_v2(self, transfers, extra_info=None) -> dict:
        return {t.name: self._v2_kv(t, self.batch_get_v1, extra_info) for t in transfers}

    def batch_set_v2(self, transfers, extra_info=None) -> dict:
        return {t.name: self._v2_kv(t, self.batch_set_v1, extra_info) for t in transfers}

    def _v2_kv(self, transfer, io, extra_info) -> list:
        keys = list(transfer.keys or [])
        if transfer.name != PoolName.KV or transfer.host_indices is None:
            self.stats.log_once(f"v2:{transfer.name}", "dualkv: pool %s is not stored",
                                str(transfer.name))
            return [False] * len(keys)
        return io(keys, transfer.host_indices, extra_info)

    # -- existence ----------------------------------------------------------------------------
    def exists(self, key) -> bool:
        return self.batch_exists([key]) == 1

    def batch_exists(self, keys, extra_info=None) -> int:
        """Length of the longest stored prefix of `keys`. SGLang's keys are a hash chain, so
        each key already names its whole prefix and `extra_info.prefix_keys` adds nothing to
        the lookup (they serve as the parent link when pages are stored)."""
        self.stats.record_exists()
        if not keys:
            return 0
        return self._guarded("batch_exists", 1, lambda: [self._stored_prefix(keys)], failed=0)[0]

    def _stored_prefix(self, keys) -> int:
        store_keys = page_keys(keys)
        # probe_disk: pages that other processes (another server, the MLA writer rank)
        # published after this store opened join the index; refreshes LRU on the way.
        num_chained = int(self.store.match(store_keys, probe_disk=True))
        if num_chained == len(keys):
            return num_chained
        # Pages stored without their parent (SGLang passes no prefix_keys by default) are not
        # linked to it, so finish the prefix by presence alone.
        present = self.store.contains(store_keys)
        return len(keys) if present.all() else int(np.argmin(present))

    # -- the store calls --------------------------------------------------------------------------
    def _load(self, keys, ptrs: np.ndarray, is_direct: bool) -> list:
        start = time.perf_counter()
        handle = self.store.load_into(page_keys(keys), ptrs)
        ok, _, _ = self._wait(handle)
        num_hit = int(np.argmin(ok)) if not ok.all() else len(ok)
        ok[num_hit:] = False  # a failed page ends the usable prefix: nothing after it is served
        self.stats.record_read(num_hit, len(keys) - num_hit, time.perf_counter() - start, is_direct)
        if num_hit < len(keys):
            self.stats.log_once(keys[num_hit], "dualkv: page %s is missing or failed its "
                                "checksum; the prefix ends there", keys[num_hit])
        return ok.tolist()

    def _store_pages(self, keys, ptrs: np.ndarray, extra_info) -> list:
        prefix = getattr(extra_info, "prefix_keys", None)
        parent = page_keys(prefix[-1:])[0] if prefix else None
        start = time.perf_counter()
        handle = self.store.store_from(page_keys(keys), ptrs, parent=parent)
        ok, err, message = self._wait(handle)
        num_ok = int(ok.sum())
        self.stats.record_write(num_ok, len(keys) - num_ok, time.perf_counter() - start)
        if num_ok < len(keys):
            reason = f"[Errno {err}] {message}" if err else "no errno reported"
            self.stats.log_once(f"write-failed:{err}", "dualkv: %d of %d pages were not "
                                "stored in %s: %s", len(keys) - num_ok, len(keys),
                                self.store.directory, reason)
        return ok.tolist()

    def _wait(self, handle) -> tuple[np.ndarray, int, str]:
        """(ok per page, errno, message) of a batch; the errno is the batch's first failure."""
        try:
            ok, err, message = self.store.wait_status(handle, self.config.timeout_s)
            return np.array(ok, dtype=bool), err, message
        finally:
            self.store.release(handle)

    def _guarded(self, what: str, n: int, run, failed=False):
        """Runs a backend call; any error becomes `failed` per page, logged once per kind. While
        the store is not attached (read-only root, no namespace yet) every page is `failed`."""
        try:
            if self.geometry is None:
                raise RuntimeError("no host pool registered yet")
            if self._attached_store() is None:
                return [failed] * n
            return run()
        except Exception as exc:  # never raise into SGLang's controller threads
            self.stats.record_error()
            self.stats.log_once(f"{what}:{type(exc).__name__}", "dualkv %s failed: %s", what, exc)
            return [failed] * n

    # -- lifecycle ----------------------------------------------------------------------------
    def clear(self) -> None:
        """Deletes every unpinned page of this namespace (the store evicts leaf by leaf)."""
        if self.store is not None:
            while self.store.evict(1 << 62) > 0:
                pass

    def get_stats(self):
        store_stats = self.store.stats() if self.store is not None else None
        return self.stats.snapshot(store_stats)

    def close(self) -> None:
        self.geometry = None  # no reopen after close
        if self.store is not None:
            self.store.close()
            self.store = None
