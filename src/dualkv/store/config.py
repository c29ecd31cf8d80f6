"""StoreConfig; the namespace directory of a store, where blocks of one model live beside the
small meta file that records their layout; and the native BlockIO's options built from both."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass

from dualkv._native import C
from dualkv.errors import InvalidArgument, StorageError
from dualkv.layout import KVLayout

META_NAME = "meta.json"
META_INTS = ("num_layers", "bytes_per_token_layer", "block_tokens", "key_bytes")
META_STRINGS = ("model_id", "rank", "namespace")
IO_BACKENDS = ("auto", "io_uring", "posix")


@dataclass(frozen=True)
class StoreConfig:
    root: str
    layout: KVLayout
    model_id: str = ""
    rank: str = ""                 # parallel rank where the engine shards KV ("tp0", ...)
    namespace: str = ""            # explicit namespace name; default: model id + layout + rank
    pool_slots: int = 256          # Full Block slots of the store's host pool
    capacity_bytes: int = 0        # on-disk bytes kept before LRU eviction; 0 = unbounded
    queue_depth: int = 32          # reads in flight (io_uring) / reader threads (posix, <= 16)
    io_backend: str = "auto"       # "auto" picks io_uring when the kernel allows it
    direct_io: bool = True         # O_DIRECT where the filesystem allows it (not tmpfs)
    fsync: bool = False            # a store batch completes once flushed (one syncfs per batch)
    num_write_threads: int = 2
    huge_pages: bool = True
    cuda: str = "auto"             # host-register the pool with CUDA: auto | off | required
    key_bytes: int = 32

    def __post_init__(self):
        if not isinstance(self.layout, KVLayout):
            raise InvalidArgument(f"StoreConfig.layout must be a KVLayout, got {self.layout!r}")
        if not self.root or not isinstance(self.root, (str, os.PathLike)):
            raise InvalidArgument("StoreConfig.root must be a directory path")
        for name in ("pool_slots", "queue_depth", "num_write_threads", "key_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"StoreConfig.{name} must be a positive int, got {value!r}")
        if not 1 <= self.queue_depth <= 4096:
            raise InvalidArgument("StoreConfig.queue_depth must be in 1..4096")
        if not 16 <= self.key_bytes <= 64:
            raise InvalidArgument("StoreConfig.key_bytes must be in 16..64")
        if not isinstance(self.capacity_bytes, int) or self.capacity_bytes < 0:
            raise InvalidArgument("StoreConfig.capacity_bytes must be an int >= 0")
        if self.io_backend not in IO_BACKENDS:
            raise InvalidArgument(f"StoreConfig.io_backend must be one of {IO_BACKENDS}, "
                                  f"got {self.io_backend!r}")
        if self.cuda not in ("auto", "off", "required"):
            raise InvalidArgument("StoreConfig.cuda must be 'auto', 'off' or 'required'")

    @property
    def namespace_bytes(self) -> bytes:
        """16 bytes naming the namespace; also written into every block header."""
        if self.namespace:
            return hashlib.sha256(f"dualkv-ns-v1|{self.namespace}".encode()).digest()[:16]
        fingerprint = self.layout.fingerprint(self.model_id)
        if not self.rank:
            return fingerprint
        return hashlib.sha256(fingerprint + f"|rank={self.rank}".encode()).digest()[:16]

    @property
    def directory(self) -> str:
        return os.path.join(os.fspath(self.root), self.namespace_bytes.hex())


def block_io_options(cfg: StoreConfig) -> C.BlockIOOptions:
    """The native BlockIO's options, built from a StoreConfig in this one place: the blocks'
    layout and namespace, the namespace directory, and the I/O settings (the posix engine
    reads on min(queue_depth, 16) threads)."""
    layout = cfg.layout
    return C.BlockIOOptions(
        num_layers=layout.num_layers, bytes_per_token_layer=layout.bytes_per_token_layer,
        block_tokens=layout.block_tokens, key_bytes=cfg.key_bytes,
        fingerprint=cfg.namespace_bytes, dir=cfg.directory, backend=cfg.io_backend,
        queue_depth=cfg.queue_depth, num_read_threads=min(cfg.queue_depth, 16),
        num_write_threads=cfg.num_write_threads, direct_io=cfg.direct_io, fsync=cfg.fsync)


def layout_record(cfg: StoreConfig) -> dict:
    layout = cfg.layout
    return {"format": 1, "num_layers": layout.num_layers,
            "bytes_per_token_layer": layout.bytes_per_token_layer,
            "block_tokens": layout.block_tokens, "key_bytes": cfg.key_bytes,
            "model_id": cfg.model_id, "rank": cfg.rank, "namespace": cfg.namespace}


def open_namespace(cfg: StoreConfig) -> str:
    """Creates the namespace directory and its meta file, or checks the meta file that is
    there: a different layout under the same namespace is an InvalidArgument."""
    directory = cfg.directory
    path = os.path.join(directory, META_NAME)
    wanted = layout_record(cfg)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create the store at {directory}: {exc}") from exc
    try:
        found = read_meta(directory)
    except FileNotFoundError:
        _write_meta(path, wanted)
        return directory
    keys = META_INTS
    if any(found[k] != wanted[k] for k in keys):
        have = {k: found[k] for k in keys}
        want = {k: wanted[k] for k in keys}
        raise InvalidArgument(f"layout mismatch: the store at {directory} holds {have}, "
                              f"this StoreConfig asks for {want}")
    return directory


def _write_meta(path: str, record: dict) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(temp, path)  # atomic: a concurrent opener sees one whole meta file
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot write the store meta file {path}: {exc}") from exc


def read_meta(directory: str) -> dict:
    """The namespace's meta file, checked: a file that is not JSON, not an object, or lacks a
    field of the right type is an InvalidArgument naming it (FileNotFoundError when absent)."""
    path = os.path.join(directory, META_NAME)
    try:
        with _open_regular(path) as f:
            found = json.load(f)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise StorageError(exc.errno, f"cannot open the store at {directory}: {exc}") from exc
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidArgument(f"store meta file {path} is unreadable: {exc}") from exc
    if not isinstance(found, dict):
        raise InvalidArgument(f"store meta file {path} is damaged: not a JSON object")
    for name in META_INTS:
        value = found.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidArgument(f"store meta file {path} is damaged: {name} is {value!r}, "
                                  "not a positive integer")
    for name in META_STRINGS:
        if not isinstance(found.get(name, ""), str):
            raise InvalidArgument(f"store meta file {path} is damaged: {name} is not a string")
    return found


def _open_regular(path: str):
    """The file for reading; a FIFO there (which a plain open waits on for a writer) or any
    other non-file is refused at once."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"store meta file {path} is not a regular file")
    return os.fdopen(fd, encoding="utf-8")
