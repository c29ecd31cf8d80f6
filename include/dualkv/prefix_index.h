// PrefixIndex: a trie over chained block keys with per-block pins, LRU eviction to a byte
// capacity and longest-prefix match. Keys are fixed-length opaque bytes (16..64); a chain's
// key i has key i-1 as its parent, so "the prompt's first m blocks are stored" is a walk down
// the chain that stops at the first key that is absent or hangs under a different parent.
//
// Invariants (checked by tests against a Python model):
// - a present block's parent is present, or a placeholder (a key named as a parent but not
//   held; its children are "orphans", reachable only by a chain that starts at them);
// - eviction takes least recently used *unpinned leaves* only, so it never orphans a block;
// - touching a block also touches all its ancestors, after it, so ancestors are at least as
//   recent as their descendants and the LRU tail is (nearly always) an evictable leaf;
// - remove() of a block removes its descendants with it.
// Every public method takes one mutex: the store calls it from several threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "dualkv/node_table.h"
#include "dualkv/status.h"

namespace dualkv {

struct IndexStats {
  uint64_t num_blocks = 0;
  uint64_t bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t hits = 0;     // blocks found by match()
  uint64_t misses = 0;   // blocks asked for by match() and not found
  uint64_t evictions = 0;
  uint64_t evicted_bytes = 0;
  uint64_t removed = 0;  // blocks dropped by remove() / drop_orphans(), descendants included
  uint64_t pinned = 0;   // blocks with a pin count > 0
  uint64_t orphans = 0;  // present blocks whose parent is not present
  uint64_t memory_bytes = 0;
  uint64_t reserved_ids = 0;  // ids kept behind chains' last blocks for their next blocks
};

// Keys travel as n * key_bytes contiguous bytes; removed/evicted keys are appended to `out`.
class PrefixIndex {
 public:
  static constexpr size_t kMinKeyBytes = 16;
  static constexpr size_t kMaxKeyBytes = 64;

  // key_bytes must be in [16, 64] (validate_key_bytes); capacity_bytes 0 = unbounded.
  PrefixIndex(size_t key_bytes, uint64_t capacity_bytes);
  static Status validate_key_bytes(size_t key_bytes);

  size_t key_bytes() const { return table_.key_bytes(); }

  // keys[0]'s parent is parent_key (nullptr: a root chain), keys[i]'s is keys[i-1]. Present
  // keys are touched, not changed. Over capacity, LRU leaves are evicted into `evicted`.
  Status insert_chain(const uint8_t* keys, size_t n, const uint8_t* parent_key,
                      const uint64_t* block_bytes, std::vector<uint8_t>* evicted);
  // Edges in any order (rebuild from block headers): a child may come before its parent.
  // has_parent[i] == 0 makes keys[i] a root. New blocks become the least recently used.
  Status insert_edges(const uint8_t* keys, const uint8_t* parent_keys, const uint8_t* has_parent,
                      size_t n, const uint64_t* block_bytes, std::vector<uint8_t>* evicted);
  // Length of the longest prefix of keys held as a chain; optionally touch and pin it.
  size_t match(const uint8_t* keys, size_t n, bool touch, bool pin);
  void contains(const uint8_t* keys, size_t n, uint8_t* out);
  // present[i] = 1 when keys[i] is held (and now pinned once more).
  Status pin(const uint8_t* keys, size_t n, uint8_t* present);
  // Absent keys are skipped (a pinned block may have been removed); unpinning a block that is
  // not pinned is an error and changes nothing.
  Status unpin(const uint8_t* keys, size_t n);
  void remove(const uint8_t* keys, size_t n, std::vector<uint8_t>* removed);
  // Frees at least num_bytes if unpinned leaves allow; returns the bytes freed.
  uint64_t evict(uint64_t num_bytes, std::vector<uint8_t>* evicted);
  // Removes every orphan and its descendants (blocks whose parent never showed up).
  void drop_orphans(std::vector<uint8_t>* removed);
  // Lays the nodes out again in depth-first order, so each chain's blocks are consecutive and
  // match() follows them without the hash table (see NodeTable::find_each). Worth it after a
  // rebuild (ids in file order) and now and then on an index grown a few blocks at a time.
  // Changes no content, pin or recency. Takes the nodes' memory twice while it runs.
  Status compact();
  IndexStats stats();

 private:
  const uint8_t* key_at(const uint8_t* keys, size_t i) const { return keys + i * key_bytes(); }
  bool is_present(uint32_t id) const { return id != kNil && table_.node(id).state == kPresent; }
  bool is_evictable(uint32_t id) const;

  // The node for key, present or made present (with block_bytes); kNil when the table is full.
  // A new node takes the id after `after` when it is reserved (NodeTable::reserve_after).
  uint32_t find_or_add_present(const uint8_t* key, uint64_t block_bytes, bool* added,
                               uint32_t after = kNil);
  void promote(uint32_t id, uint64_t block_bytes);
  uint32_t find_or_add_placeholder(const uint8_t* key);
  bool can_adopt(uint32_t child, uint32_t parent) const;
  void link_child(uint32_t child, uint32_t parent);
  void unlink_child(uint32_t child);
  void drop_placeholder_if_unused(uint32_t id);
  void free_present(uint32_t id);
  void remove_subtree(uint32_t root, std::vector<uint8_t>* removed);

  void lru_unlink(uint32_t id);
  void lru_push_front(uint32_t id);
  void lru_push_back(uint32_t id);
  void lru_insert_after(uint32_t anchor, uint32_t id);
  bool is_lru_run(const uint32_t* ids, size_t n) const;
  void splice_to_front(uint32_t first, uint32_t last);
  void touch(const uint32_t* ids, size_t n);
  void place_pending_by_depth(const std::vector<uint32_t>& pending);

  uint64_t evict_locked(uint64_t num_bytes, std::vector<uint8_t>* evicted);
  void evict_over_capacity(std::vector<uint8_t>* evicted);
  void append_key(uint32_t id, std::vector<uint8_t>* out) const;

  std::mutex mu_;
  NodeTable table_;
  uint64_t capacity_bytes_;
  uint32_t lru_head_ = kNil;  // most recently used
  uint32_t lru_tail_ = kNil;
  uint32_t placeholder_head_ = kNil;
  IndexStats stats_;
  std::vector<uint32_t> scratch_;  // node ids of the current call (under mu_)
};

}  // namespace dualkv
