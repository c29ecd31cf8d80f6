"""BlockStore: the KV block store = prefix index + block files + host pool, one batch API.

Every method takes a whole batch of blocks and makes one native call (GIL released). Loads and
stores are asynchronous: they return a Handle; `wait` (with a deadline), `poll` and `release`
finish it. A stored block becomes visible to `match` when its handle finishes (wait, or a poll
that sees it done, or release). See docs/store-api.md.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from dualkv._native import C
from dualkv.errors import InvalidArgument, StorageError
from dualkv.store.args import int64_array, layer_range, parent_key
from dualkv.store.config import StoreConfig, block_io_options, open_namespace
from dualkv.store.keys import as_keys, chain_keys
from dualkv.store.pool import HostPool

log = logging.getLogger(__name__)

__all__ = ["BlockStore", "Handle", "StoreConfig"]


@dataclass
class Handle:
    """One batch in flight. `kind` is "load" or "store"."""
    id: int
    kind: str
    keys: np.ndarray
    parent: bytes | None = None
    ok: np.ndarray | None = field(default=None, repr=False)  # set once finished
    # the store that made it: ids are per store, so another store's handle names a batch of
    # its own (and would index keys it never stored)
    owner: object = field(default=None, repr=False, compare=False)

    @property
    def num_blocks(self) -> int:
        return len(self.keys)


class BlockStore:
    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self.layout = cfg.layout
        self.namespace = cfg.namespace_bytes.hex()
        self.directory = open_namespace(cfg)
        self._pool = HostPool(cfg.layout, cfg.pool_slots, cfg.huge_pages, cfg.cuda)
        self._io = C.BlockIO(block_io_options(cfg), self._pool.native)
        self.index = C.PrefixIndex(cfg.key_bytes, cfg.capacity_bytes)
        self._lock = threading.Lock()
        self._token = object()  # names this store in its handles
        self.num_dropped_on_open = self._rebuild_index()

    @property
    def pool(self) -> HostPool:
        """The store's host pool of Full Block slots."""
        return self._open(self._pool)

    @property
    def io(self):
        """The native BlockIO (batched block file I/O)."""
        return self._open(self._io)

    @property
    def backend(self) -> str:
        return self.io.backend

    def chain_keys(self, tokens, prior=None) -> np.ndarray:
        """Keys of the full blocks of `tokens` (int32), chained after `prior`."""
        return chain_keys(tokens, self.layout.block_tokens, prior)

    def match(self, keys, touch: bool = True, probe_disk: bool = False) -> int:
        """Longest stored prefix of the chain `keys`, in blocks. With probe_disk, blocks past
        the indexed prefix whose files exist (written by another process sharing the
        directory) join the index first: one stat per key, no read; loads still verify."""
        keys = self._keys(keys)
        hit = int(self.index.match(keys, touch, False))
        if not probe_disk or hit == len(keys):
            return hit
        on_disk = self.io.exists(keys[hit:])
        found = len(on_disk) if on_disk.all() else int(np.argmin(on_disk))
        if found == 0:
            return hit
        parent = keys[hit - 1].tobytes() if hit else None
        self._delete(self.index.insert_chain(keys[hit:hit + found], parent,
                                             self.layout.full_block_bytes))
        return int(self.index.match(keys, touch, False))

    def refresh(self) -> int:
        """Re-reads every block header in the directory and indexes blocks that other
        processes published since we opened; returns how many blocks the index gained."""
        before = self.index.stats()["num_blocks"]
        self._rebuild_index()
        return int(self.index.stats()["num_blocks"] - before)

    def contains(self, keys) -> np.ndarray:
        return self.index.contains(self._keys(keys))

    def load(self, keys, slots, layers=None) -> Handle:
        """Reads Full Blocks (or layers [a, b) plus the header) into pool slots, verified."""
        keys = self._keys(keys)
        first, last = self._layers(layers)
        handle = self.io.load(keys, self._slots(slots, len(keys)), first, last)
        return Handle(handle, "load", keys, owner=self._token)

    def load_into(self, keys, dst_ptrs, layers=None) -> Handle:
        """Reads Layer Blocks to raw addresses: dst_ptrs is (n, num layers in range) int64."""
        keys = self._keys(keys)
        first, last = self._layers(layers)
        ptrs = int64_array(dst_ptrs, (len(keys), last - first), "dst_ptrs")
        return Handle(self.io.load_into(keys, ptrs, first, last), "load", keys,
                      owner=self._token)

    def store(self, keys, slots, parent=None) -> Handle:
        """Writes the blocks in pool slots as the chain keys[0..n) under `parent`. The slots'
        header pages are overwritten; keep the slots untouched until the handle finishes."""
        keys, parent = self._keys(keys), self._parent(parent)
        handle = self.io.store(keys, self._slots(slots, len(keys)), parent)
        return Handle(handle, "store", keys, parent, owner=self._token)

    def store_from(self, keys, src_ptrs, parent=None) -> Handle:
        """Writes blocks whose Layer Blocks lie at addresses: src_ptrs is (n, num_layers)."""
        keys, parent = self._keys(keys), self._parent(parent)
        ptrs = int64_array(src_ptrs, (len(keys), self.layout.num_layers), "src_ptrs")
        return Handle(self.io.store_from(keys, ptrs, parent), "store", keys, parent,
                      owner=self._token)

    def wait(self, handle: Handle, timeout: float = 60.0, check: bool = True) -> np.ndarray:
        """Per block: True = done (and verified, for loads). Raises TimedOut past `timeout`
        seconds; a failed store raises StorageError (errno kept) unless check=False."""
        ok, err, message = self.wait_status(handle, timeout)
        if check and handle.kind == "store" and err:
            raise StorageError(err, message)
        return ok

    def wait_status(self, handle: Handle, timeout: float = 60.0) -> tuple[np.ndarray, int, str]:
        """`wait` that reports a failure instead of raising it: (ok per block, errno, message)
        of the batch's first filesystem error; errno 0 when there was none (a load's missing
        or corrupt blocks show in ok only). Raises TimedOut past `timeout` seconds."""
        ok, err, message = self.io.wait(self._own(handle).id, float(timeout))
        self._finish(handle, ok)
        return ok, int(err), message

    def poll(self, handle: Handle) -> bool:
        if self._own(handle).ok is not None:
            return True
        if not self.io.poll(handle.id):
            return False
        ok, _, _ = self.io.wait(handle.id, 0.0)
        self._finish(handle, ok)
        return True

    def finished_at(self, handle: Handle) -> float | None:
        """When the batch's last block finished, in seconds of `time.monotonic()`; None while
        blocks are in flight. Times a batch without depending on when it was polled."""
        ns = self.io.finished_at(self._own(handle).id)
        return None if ns < 0 else ns / 1e9

    def release(self, handle: Handle, timeout: float = 60.0) -> None:
        """Frees the handle; waits (up to `timeout`) for blocks still in flight."""
        if self._own(handle).ok is None:
            self.wait(handle, timeout, check=False)
        self.io.release(handle.id, float(timeout))

    def pin(self, keys) -> np.ndarray:
        """Pinned blocks are never evicted. Returns which keys were present (and pinned)."""
        return self.index.pin(self._keys(keys))

    def unpin(self, keys) -> None:
        self.index.unpin(self._keys(keys))

    def evict(self, num_bytes: int) -> int:
        """Deletes least recently used unpinned leaf blocks; returns the bytes freed."""
        if not isinstance(num_bytes, (int, np.integer)) or num_bytes < 0:
            raise InvalidArgument(f"num_bytes must be an int >= 0, got {num_bytes!r}")
        self._open(None)
        evicted = self.index.evict(int(num_bytes))
        self._delete(evicted)
        return len(evicted) * self.layout.full_block_bytes

    def stats(self) -> dict:
        io, index = self.io.stats(), self.index.stats()
        return dict(
            index, **io, pool=self.pool.stats(), dropped_on_open=self.num_dropped_on_open,
            load_failures=io["missing"] + io["corrupt"] + io["read_errors"],
            namespace=self.namespace, directory=self.directory)

    def close(self, timeout: float = 60.0) -> dict:
        """Waits up to `timeout` s for I/O in flight (the GIL released, so other threads run),
        then frees the native parts (pool memory included). Returns what it abandoned,
        {"num_batches", "num_blocks"}: I/O stalled past the deadline (a frozen or hung device)
        is left to finish on its own and its memory is never freed, so close() never blocks
        for the whole stall; those blocks' stores are not acknowledged. Every later call but
        close() raises InvalidArgument."""
        abandoned = {"num_batches": 0, "num_blocks": 0}
        if self._io is not None:
            abandoned = dict(self._io.close(float(timeout)))
            if abandoned["num_batches"]:
                log.warning("store %s closed with %d blocks of %d batches still in flight "
                            "after %.1f s; abandoned", self.directory, abandoned["num_blocks"],
                            abandoned["num_batches"], timeout)
            self._io = None  # freed now unless abandoned
            self._pool = None
        return abandoned

    @property
    def is_closed(self) -> bool:
        return self._io is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _finish(self, handle: Handle, ok: np.ndarray) -> None:
        """Once per handle: failed loads leave the index; stored blocks join it."""
        with self._lock:
            if handle.ok is not None:
                return
            handle.ok = ok
            if handle.kind == "load":
                if not ok.all():
                    self.index.remove(handle.keys[~ok])
                return
            self._insert_stored(handle.keys, handle.parent, ok)

    def _insert_stored(self, keys, parent, ok) -> None:
        size = self.layout.full_block_bytes
        prefix = len(ok) if ok.all() else int(np.argmin(ok))
        evicted = [self.index.insert_chain(keys[:prefix], parent, size)]
        rest = np.nonzero(ok[prefix:])[0] + prefix  # after a failed block: edges to parents
        if len(rest):
            parents = keys[rest - 1]
            evicted.append(self.index.insert_edges(keys[rest], parents,
                                                   np.ones(len(rest), np.uint8), size))
        for keys_out in evicted:
            self._delete(keys_out)

    def _delete(self, keys) -> None:
        if len(keys):
            self.io.remove_files(np.ascontiguousarray(keys))

    def _rebuild_index(self) -> int:
        found = self.io.scan(remove_bad=True)
        evicted = self.index.insert_edges(found["keys"], found["parents"],
                                          found["has_parent"].astype(np.uint8),
                                          self.layout.full_block_bytes)
        self._delete(evicted)
        self.index.compact()  # headers came in file order: lay each chain out consecutively
        return int(found["num_bad"])

    def _open(self, part):
        """`part`, once the store is known to be open."""
        if self._io is None:
            raise InvalidArgument(f"the store at {self.directory} is closed")
        return part

    def _own(self, handle) -> Handle:
        if not isinstance(handle, Handle):
            raise InvalidArgument(f"expected a Handle, got {type(handle).__name__}")
        if handle.owner is not self._token:
            raise InvalidArgument(f"handle {handle.id} belongs to another store")
        return handle

    def _keys(self, keys) -> np.ndarray:
        self._open(None)
        return as_keys(keys, self.cfg.key_bytes)

    def _parent(self, parent) -> bytes | None:
        return parent_key(parent, self.cfg.key_bytes)

    def _slots(self, slots, n: int) -> np.ndarray:
        return int64_array(slots, (n,), "slots")

    def _layers(self, layers) -> tuple[int, int]:
        return layer_range(layers, self.layout.num_layers)
