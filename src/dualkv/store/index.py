"""The prefix index: which blocks the store holds, as a trie over chained block keys.

`PrefixIndex` is the C++ index (dualkv._C.PrefixIndex); every method is one native call per
batch with the GIL released, under one mutex, so the store may call it from several threads.
Keys are (n, key_bytes) uint8 arrays (`dualkv.store.keys.as_keys` converts lists of bytes or
SGLang hex keys, and the methods call it for anything that is not such an array).

    index = PrefixIndex(key_bytes=32, capacity_bytes=0)     # 0 = unbounded
    index.insert_chain(keys, parent_key=None, block_bytes=0) -> evicted keys (m, key_bytes)
    index.insert_edges(keys, parent_keys, has_parent, block_bytes=0) -> evicted keys
    index.match(keys, touch=True, pin=False) -> int         # longest held prefix, in blocks
    index.contains(keys) -> bool array                      # per key, no prefix semantics
    index.pin(keys) -> bool array (held, now pinned)        # pinned blocks are never evicted
    index.unpin(keys)                                       # absent keys are skipped
    index.remove(keys) -> removed keys                      # with all their descendants
    index.evict(num_bytes) -> evicted keys                  # LRU unpinned leaves
    index.drop_orphans() -> removed keys                    # blocks whose parent is missing
    index.compact()                                         # chains laid out consecutively
    index.stats() -> dict; len(index)

Semantics the store relies on:
- keys[i]'s parent is keys[i-1]; keys[0]'s is `parent_key` (None: a root). A parent that is
  not held leaves the chain as *orphans* (stats()["orphans"]) until it is inserted; match()
  still finds an orphan chain when asked from its first key.
- match() walks the chain while each key is held *and* hangs under the previous key; with
  touch it marks the matched blocks and all their ancestors as most recently used (ancestors
  after descendants), with pin it pins the matched blocks atomically with the lookup.
- Eviction (evict() and automatic eviction past capacity_bytes on insert) takes the least
  recently used unpinned leaves, so it never orphans a block; it returns the keys so the store
  can delete their files. The keys just inserted are the most recent, but they can be evicted
  too when the capacity is smaller than what is pinned plus the new chain.
- insert_edges() rebuilds from block headers in any order (a child may precede its parent);
  blocks it adds count as least recently used, parents ahead of children.
- match() is fastest on a chain whose blocks were inserted in one call: their nodes are
  consecutive in memory and it follows them without the hash table (~10-15 µs for 1,024
  keys; ~40-50 µs for a chain grown a few blocks per turn, ~150-280 µs for one scattered block
  by block; bench/RESULTS.md, 1-10 M blocks). A chain's newest block keeps
  32 ids behind it for the chain's next inserts (at most 1/8 of the blocks are kept so;
  stats()["reserved_ids"]), so a chain grown by turns stays in runs. compact() lays every chain
  out that way again: the store calls it after a rebuild (nodes come in file order); an index
  grown a few blocks per turn gains from it now and then. It takes the nodes' memory twice
  while it runs and changes nothing else.
- stats(): num_blocks, bytes, capacity_bytes, hits and misses (blocks found / not found by
  match), evictions, evicted_bytes, removed, pinned (blocks with a pin), orphans, memory_bytes,
  reserved_ids.
"""
from dualkv._native import C

PrefixIndex = C.PrefixIndex

__all__ = ["PrefixIndex"]
