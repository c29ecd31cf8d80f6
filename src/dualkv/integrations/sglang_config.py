"""Configuration of the SGLang backend: the extra-config keys it reads, its key namespace, and
SGLang page keys as store keys. docs/sglang.md lists every key."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np

from dualkv.errors import InvalidArgument

# Keys SGLang itself reads from --hicache-storage-backend-extra-config; accepted and ignored.
SGLANG_KEYS = {"backend_name", "module_path", "class_name", "interface_v1", "tp_lcm_size"}
KEY_BYTES = 32
MAX_IO_DEPTH = 4096  # the io_uring engine's limit on reads in flight


@dataclass(frozen=True)
class SGLangBackendConfig:
    root: str  # block directory (a local disk or a shared filesystem mount)
    pool_slots: int = 32  # store slots: bounce buffers when a page cannot take O_DIRECT
    queue_depth: int = 32  # pages read in flight (each: a header read + one per region)
    write_threads: int = 4  # threads writing pages (each page: one write and a rename)
    io_backend: str = "auto"  # "auto" | "io_uring" | "posix"
    direct_io: bool = True  # O_DIRECT reads and writes where the filesystem allows
    fsync: bool = False  # a set returns once its pages are flushed (one syncfs per batch)
    capacity_bytes: int = 0  # evict least-recently-used pages beyond this; 0 = no limit
    timeout_s: float = 60.0  # deadline of one batch; past it the batch reports False
    model_id: str = ""  # overrides SGLang's model name in the namespace

    def __post_init__(self):
        if not isinstance(self.root, str) or not self.root:
            raise InvalidArgument("dualkv SGLang backend: extra config 'root' (the block "
                                  "directory) is required")
        for name in ("pool_slots", "queue_depth", "write_threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise InvalidArgument(f"extra config {name!r} must be a positive integer")
        if not isinstance(self.capacity_bytes, int) or self.capacity_bytes < 0:
            raise InvalidArgument("extra config 'capacity_bytes' must be an integer >= 0")
        if self.io_backend not in ("auto", "io_uring", "posix"):
            raise InvalidArgument("extra config 'io_backend' must be auto, io_uring or posix")
        if not self.timeout_s > 0:
            raise InvalidArgument("extra config 'timeout_s' must be positive")

    @classmethod
    def from_extra_config(cls, extra: dict | None) -> SGLangBackendConfig:
        extra = dict(extra or {})
        known = {f.name for f in fields(cls)}
        unknown = set(extra) - known - SGLANG_KEYS
        if unknown:
            raise InvalidArgument(f"unknown dualkv extra config keys {sorted(unknown)}; "
                                  f"known: {sorted(known)}")
        values = {k: v for k, v in extra.items() if k in known}
        values.setdefault("root", "")  # checked (with a clear message) in __post_init__
        for name in ("pool_slots", "queue_depth", "write_threads", "capacity_bytes"):
            if name in values:
                values[name] = _as_int(name, values[name])
        if "timeout_s" in values:
            values["timeout_s"] = float(values["timeout_s"])
        for name in ("direct_io", "fsync"):
            if name in values:
                values[name] = _as_bool(values[name])
        return cls(**values)


def _as_int(name, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"extra config {name!r} must be an integer, got {value!r}") from None


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def rank_namespace(storage_config) -> str:
    """The parallel shard a rank stores, named the way HiCacheFile suffixes its files: MHA KV
    is sharded by tensor-parallel rank; MLA KV is the same on every TP rank, so MLA ranks share
    one namespace (only the storage-writer rank writes it). Pipeline stages and attention
    context-parallel ranks always hold different KV."""
    parts = [] if storage_config.is_mla_model else \
        [f"tp{storage_config.tp_rank}of{storage_config.tp_size}"]
    if storage_config.pp_size > 1:
        parts.append(f"pp{storage_config.pp_rank}of{storage_config.pp_size}")
    if storage_config.attn_cp_size > 1:
        parts.append(f"cp{storage_config.attn_cp_rank}of{storage_config.attn_cp_size}")
    return "_".join(parts) or "all"


def model_namespace(storage_config, config: SGLangBackendConfig, format_tag: str) -> str:
    """Model name (SGLang's, tagged with its page format) plus dualkv's byte-order tag."""
    model = config.model_id or storage_config.model_name or "unnamed-model"
    return f"{model}|{format_tag}"


def block_store_config(storage_config, config: SGLangBackendConfig, geometry):
    """The StoreConfig of one rank's pages, `geometry` being its host pool's PageGeometry."""
    from dualkv.store.config import StoreConfig

    layout = geometry.kv_layout()
    # queue_depth counts pages, like fio's iodepth counts files: each page costs the store
    # one header read plus one read per region, so the ring holds that many per page.
    io_depth = min(MAX_IO_DEPTH, config.queue_depth * (1 + layout.num_layers))
    return StoreConfig(
        config.root, layout,
        model_id=model_namespace(storage_config, config, geometry.namespace_tag()),
        rank=rank_namespace(storage_config), pool_slots=config.pool_slots,
        capacity_bytes=config.capacity_bytes, queue_depth=io_depth,
        io_backend=config.io_backend, direct_io=config.direct_io, fsync=config.fsync,
        num_write_threads=config.write_threads)


def page_keys(keys) -> np.ndarray:
    """SGLang page keys (64-hex SHA-256 chain digests) as (n, 32) uint8 store keys. A key that
    is not 64 hex digits is digested with SHA-256, so any string key works."""
    keys = list(keys)
    try:
        if all(len(k) == 2 * KEY_BYTES for k in keys):
            raw = bytes.fromhex("".join(keys))
            return np.frombuffer(raw, dtype=np.uint8).reshape(len(keys), KEY_BYTES).copy()
    except (TypeError, ValueError):
        pass
    out = np.empty((len(keys), KEY_BYTES), dtype=np.uint8)
    for i, key in enumerate(keys):
        out[i] = np.frombuffer(_one_key(key), dtype=np.uint8)
    return out


def _one_key(key) -> bytes:
    if isinstance(key, str):
        try:
            if len(key) == 2 * KEY_BYTES:
                return bytes.fromhex(key)
        except ValueError:
            pass
        return hashlib.sha256(key.encode()).digest()
    if isinstance(key, (bytes, bytearray)) and len(key) == KEY_BYTES:
        return bytes(key)
    raise InvalidArgument(f"an SGLang page key must be a str or {KEY_BYTES} bytes, got {key!r}")
