"""The seam between BlockStore and the prefix index (`dualkv._C.PrefixIndex`, index branch).

BlockStore only calls `make_index` and the index methods below. Until the C++ index is merged
into this branch, `_InterimIndex` stands in with the same methods so the store works end to
end; it is a plain dict + LRU order, not the trie, and is deleted when the index lands.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from dualkv._native import C
from dualkv.errors import InvalidArgument

try:
    from dualkv.keys import as_keys, chain_keys  # noqa: F401  (index branch)
except ImportError:  # interim, until the index branch is merged
    chain_keys = None

    def as_keys(x, key_bytes: int = 32) -> np.ndarray:
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != key_bytes:
                raise InvalidArgument(f"keys must be a (n, {key_bytes}) uint8 array, "
                                      f"got {x.dtype} {x.shape}")
            return np.ascontiguousarray(x)
        if isinstance(x, (bytes, str)) or not hasattr(x, "__len__"):
            raise InvalidArgument("keys must be an array or a list of keys")
        raw = [bytes.fromhex(k) if isinstance(k, str) else bytes(k) for k in x]
        if any(len(k) != key_bytes for k in raw):
            raise InvalidArgument(f"every key must have {key_bytes} bytes")
        return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), key_bytes).copy()


def make_index(key_bytes: int, capacity_bytes: int):
    native = getattr(C, "PrefixIndex", None)
    if native is not None:
        return native(key_bytes, capacity_bytes)
    return _InterimIndex(key_bytes, capacity_bytes)


class _InterimIndex:
    """Same methods as dualkv._C.PrefixIndex, enough for the store; see the module doc."""

    def __init__(self, key_bytes: int, capacity_bytes: int):
        self.key_bytes, self.capacity_bytes = key_bytes, capacity_bytes
        self.blocks: OrderedDict[bytes, list] = OrderedDict()  # key -> [parent, bytes, pins]
        self.counts = dict(hits=0, misses=0, evictions=0, evicted_bytes=0, removed=0)

    def insert_chain(self, keys, parent_key=None, block_bytes=0):
        parent = bytes(parent_key) if parent_key is not None else None
        for key in _rows(keys):
            self._add(key, parent, block_bytes, recent=True)
            parent = key
        return self._over_capacity()

    def insert_edges(self, keys, parent_keys, has_parent, block_bytes=0):
        for key, parent, has in zip(_rows(keys), _rows(parent_keys), has_parent):
            self._add(key, parent if has else None, block_bytes, recent=False)
        return self._over_capacity()

    def match(self, keys, touch=True, pin=False):
        parent, found = None, []
        for i, key in enumerate(_rows(keys)):
            entry = self.blocks.get(key)
            if entry is None or (i > 0 and entry[0] != parent):
                break
            found.append(key)
            parent = key
        self.counts["hits"] += len(found)
        self.counts["misses"] += len(keys) - len(found)
        for key in reversed(found) if touch else ():
            self.blocks.move_to_end(key)
        return len(found)

    def contains(self, keys):
        return np.array([k in self.blocks for k in _rows(keys)], dtype=bool)

    def pin(self, keys):
        present = self.contains(keys)
        for key, is_present in zip(_rows(keys), present):
            if is_present:
                self.blocks[key][2] += 1
        return present

    def unpin(self, keys):
        for key in _rows(keys):
            if key in self.blocks and self.blocks[key][2] > 0:
                self.blocks[key][2] -= 1

    def remove(self, keys):
        doomed = {k for k in _rows(keys) if k in self.blocks}
        grew = True
        while grew:
            more = {k for k, e in self.blocks.items() if e[0] in doomed and k not in doomed}
            doomed |= more
            grew = bool(more)
        for key in doomed:
            del self.blocks[key]
        self.counts["removed"] += len(doomed)
        return _array(doomed, self.key_bytes)

    def evict(self, num_bytes):
        evicted, freed = [], 0
        parents = {e[0] for e in self.blocks.values()}
        for key, entry in list(self.blocks.items()):  # oldest first
            if freed >= num_bytes:
                break
            if entry[2] == 0 and key not in parents:
                freed += entry[1]
                evicted.append(key)
                del self.blocks[key]
        self.counts["evictions"] += len(evicted)
        self.counts["evicted_bytes"] += freed
        return _array(evicted, self.key_bytes)

    def stats(self):
        used = sum(e[1] for e in self.blocks.values())
        return dict(self.counts, num_blocks=len(self.blocks), bytes=used,
                    capacity_bytes=self.capacity_bytes,
                    pinned=sum(1 for e in self.blocks.values() if e[2]))

    def _add(self, key, parent, block_bytes, recent):
        if key not in self.blocks:
            self.blocks[key] = [parent, int(block_bytes), 0]
            if not recent:
                self.blocks.move_to_end(key, last=False)
        elif recent:
            self.blocks.move_to_end(key)

    def _over_capacity(self):
        used = sum(e[1] for e in self.blocks.values())
        if self.capacity_bytes and used > self.capacity_bytes:
            return self.evict(used - self.capacity_bytes)
        return _array([], self.key_bytes)


def _rows(keys):
    return [bytes(row) for row in np.asarray(keys, dtype=np.uint8)]


def _array(keys, key_bytes):
    keys = list(keys)
    if not keys:
        return np.zeros((0, key_bytes), dtype=np.uint8)
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), key_bytes).copy()
