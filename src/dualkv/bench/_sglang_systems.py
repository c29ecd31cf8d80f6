"""The two systems `dualkv bench sglang` compares, each driven the way SGLang's HiCacheController
drives it (cache_controller.py: `_page_set_zero_copy` / `_page_get_zero_copy` with
interface_v1, `_generic_page_set` / `_generic_page_get` otherwise), and fio as the ceiling."""
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import time

from dualkv.bench.storage import drop_caches as drop_page_cache


def _storage_config(model_name: str, extra_config: dict):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0,
                                attn_cp_size=1, is_mla_model=False, enable_storage_metrics=False,
                                is_page_first_layout=False, model_name=model_name,
                                extra_config=extra_config)


class _Side:
    def fresh_keys(self, num_pages: int) -> list:
        return [os.urandom(32).hex() for _ in range(num_pages)]

    def _gbps(self, num_pages: int, seconds: float) -> float:
        return num_pages * self.page_bytes / seconds / 1e9


class DualKVSide(_Side):
    def __init__(self, pool, root: str, queue_depth: int, write_threads: int,
                 direct_io: bool = True):
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

        extra = {"backend_name": "dualkv", "module_path": "dualkv.integrations.sglang",
                 "class_name": "DualKVHiCacheStorage", "interface_v1": 1, "root": root,
                 "fsync": True, "queue_depth": queue_depth, "pool_slots": 8,
                 "write_threads": write_threads, "direct_io": direct_io}
        self.backend = StorageBackendFactory.create_backend(
            "dynamic", _storage_config("bench-model", extra), pool)
        self.backend.register_mem_pool_host(pool)
        self.page_bytes = self.backend.geometry.page_bytes
        self.file_bytes = self.backend.store.layout.full_block_bytes

    def set_durable(self, keys, host_indices) -> float:
        start = time.perf_counter()
        ok = self.backend.batch_set_v1(keys, host_indices)  # flushed: one syncfs per batch
        _fsync_dir(self.backend.store.directory)  # the renames too
        seconds = time.perf_counter() - start
        _check(ok, "dualkv batch_set_v1")
        return self._gbps(len(keys), seconds)

    def get(self, keys, host_indices) -> float:
        start = time.perf_counter()
        ok = self.backend.batch_get_v1(keys, host_indices)
        seconds = time.perf_counter() - start
        _check(ok, "dualkv batch_get_v1")
        return self._gbps(len(keys), seconds)

    def files(self, keys) -> list:
        return [self.backend.store.io.path_of(bytes.fromhex(k)) for k in keys]

    def is_direct(self) -> bool:
        """Whether the store read and wrote with O_DIRECT (it falls back where refused)."""
        stats = self.backend.store.stats()
        return bool(stats["direct_reads"] and stats["direct_writes"])

    def io_path(self) -> str:
        return self.backend.get_stats().as_dict()["io_path"]

    def store_backend(self) -> str:
        return self.backend.store.backend

    def close(self):
        self.backend.close()


class HiCacheFileSide(_Side):
    def __init__(self, pool, root: str):
        from sglang.srt.mem_cache.hicache_storage import HiCacheFile

        self.pool = pool
        self.backend = HiCacheFile(_storage_config("bench-model", {"file_storage_path": root}))
        self.backend.register_mem_pool_host(pool)
        self.root = root
        page = pool.get_dummy_flat_data_page()
        self.page_bytes = self.file_bytes = page.numel() * page.element_size()

    def set_durable(self, keys, host_indices) -> float:
        page = self.pool.page_size
        start = time.perf_counter()
        data = [self.pool.get_data_page(host_indices[i * page]) for i in range(len(keys))]
        ok = self.backend.batch_set(keys, data)
        # HiCacheFile never syncs. It gets dualkv's own durability step: one syncfs of the
        # filesystem once the batch's pages are written (not one fdatasync per page file,
        # serially, which dualkv does not pay), then the folder for the new names.
        syncfs(self.root)
        _fsync_dir(self.root)
        seconds = time.perf_counter() - start
        _check([ok], "HiCacheFile batch_set")
        return self._gbps(len(keys), seconds)

    def get(self, keys, host_indices) -> float:
        page = self.pool.page_size
        start = time.perf_counter()
        dummy = [self.pool.get_dummy_flat_data_page() for _ in keys]
        pages = self.backend.batch_get(keys, dummy)
        for i, data in enumerate(pages):
            self.pool.set_from_flat_data_page(host_indices[i * page], data)
        seconds = time.perf_counter() - start
        _check([p is not None for p in pages], "HiCacheFile batch_get")
        return self._gbps(len(keys), seconds)

    def files(self, keys) -> list:
        return [os.path.join(self.root, f"{k}{self.backend.config_suffix}.bin") for k in keys]

    def close(self):
        self.backend.clear()


def _check(ok, what):
    if not all(ok):
        raise RuntimeError(f"{what}: {len(ok) - sum(map(bool, ok))} pages failed in the bench")


def syncfs(path: str) -> None:
    """syncfs(2) on the filesystem holding `path` (Python's os has no binding for it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def drop_caches(files) -> bool:
    """Evicts these files from the page cache; True when the whole cache could be dropped."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    return drop_page_cache()


def fio_read_gbps(files, file_bytes: int, depth: int, workdir: str) -> float:
    """fio's O_DIRECT read GB/s over these files (hard links: the same disk blocks, one
    file-sized read each), page cache dropped first."""
    links = tempfile.mkdtemp(prefix="fio-read-", dir=workdir)
    try:
        for i, path in enumerate(files):
            os.link(path, os.path.join(links, str(i)))
        drop_caches(files)
        return _fio(_fio_common(file_bytes, depth, len(files)) +
                    ["--name=read", "--rw=read", f"--opendir={links}"], "read")
    finally:
        shutil.rmtree(links, ignore_errors=True)


def fio_write_gbps(num_files: int, file_bytes: int, depth: int, workdir: str) -> float:
    """fio's O_DIRECT write GB/s of as many bytes to one file, with a final fsync."""
    target = os.path.join(workdir, "fio-write.dat")
    try:
        return _fio(_fio_common(file_bytes, depth, num_files) +
                    ["--name=write", "--rw=write", "--end_fsync=1", f"--filename={target}"],
                    "write")
    finally:
        if os.path.exists(target):
            os.remove(target)


def _fio_common(file_bytes: int, depth: int, num_files: int) -> list:
    return ["--output-format=json", "--ioengine=io_uring", "--direct=1", f"--bs={file_bytes}",
            f"--iodepth={depth}", f"--size={file_bytes * num_files}"]


def _fio(cmd, kind) -> float:
    out = subprocess.run(["fio", *cmd], capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])["jobs"][0][kind]["bw_bytes"] / 1e9
