// NodeTable: the storage under the prefix index. Nodes live in fixed-size chunks (ids are
// 32-bit, growth never copies, a node moves only when renumber() lays them all out again),
// each followed by its key in the same slot; an open-addressing hash table maps keys to node
// ids. Freed ids go on a free list; ids reserved behind a chain's newest block wait for it.
//
// Memory per node with 32-byte keys: a 72-byte slot plus 8 bytes per hash slot at a load
// factor of 3/8..3/4, i.e. about 80-93 bytes, plus reserved slots (at most 1/8 of the
// nodes: up to 9 bytes a node); nothing else is allocated per node.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "dualkv/huge_buffer.h"

namespace dualkv {

constexpr uint32_t kNil = 0xFFFFFFFFu;

enum NodeState : uint32_t {
  kFree = 0,
  kPresent = 1,      // a block the index holds
  kPlaceholder = 2,  // a parent key whose block is not (yet) here; holds its children's links
  kReserved = 3,     // no node: an id kept free right behind a chain's last block, for the
                     // blocks that chain gets next (see reserve_after)
};

// Per-node state; the key follows it in memory. Links are node ids (kNil = none).
struct Node {
  uint64_t block_bytes;
  uint32_t parent;
  uint32_t first_child;
  uint32_t next_sibling;
  uint32_t prev_sibling;
  uint32_t lru_prev;  // LRU list for present nodes; placeholder list / free list otherwise
  uint32_t lru_next;
  uint32_t num_children;
  uint32_t pin_count : 24;
  uint32_t state : 2;
  uint32_t is_pending : 1;  // inserted by insert_edges, not yet placed in the LRU list
};
static_assert(sizeof(Node) == 40, "Node layout is part of the memory budget");

constexpr uint32_t kMaxPinCount = (1u << 24) - 1;

class NodeTable {
 public:
  explicit NodeTable(size_t key_bytes);

  size_t key_bytes() const { return key_bytes_; }
  size_t num_nodes() const { return num_nodes_; }
  size_t memory_bytes() const;

  Node& node(uint32_t id) { return *reinterpret_cast<Node*>(slot(id)); }
  const Node& node(uint32_t id) const { return *reinterpret_cast<const Node*>(slot(id)); }
  const uint8_t* key(uint32_t id) const { return slot(id) + sizeof(Node); }

  // Node id of key, or kNil. The two-argument form takes hash(key) computed beforehand.
  uint32_t find(const uint8_t* key) const { return find(key, hash(key)); }
  inline uint32_t find(const uint8_t* key, uint64_t key_hash) const;
  inline uint64_t hash(const uint8_t* key) const;
  // Node id of key; when absent, adds a node (zeroed, links kNil, state kFree for the caller
  // to set) and sets *inserted. Returns kNil when 2^32 - 1 nodes already exist. A new node
  // takes the id right after `after` when that id is reserved (the next block of its chain).
  uint32_t find_or_insert(const uint8_t* key, bool* inserted, uint32_t after = kNil);
  // Keeps the ids right behind `last` (a chain's newest block) free for that chain's next
  // blocks, so a chain grown a few blocks per turn, between other chains' turns, still lies
  // in runs of consecutive nodes: lookups of a run share pages and cache lines, and match()
  // follows ids. Only when `last` is the newest id. Reservations are capped at 1/8 of the
  // nodes (the oldest go back to the free list first), so they cost at most ~9 bytes a block.
  void reserve_after(uint32_t last);
  size_t num_reserved() const { return num_reserved_; }
  // Removes the node's key from the table and frees its id.
  void erase(uint32_t id);
  // Is id a node (handed out, not freed or reserved)?
  bool is_live(uint32_t id) const {
    return id < next_id_ && node(id).state != kFree && node(id).state != kReserved;
  }
  // Ids handed out so far are below this (live, freed or reserved).
  uint32_t id_limit() const { return next_id_; }
  // Moves every live node to id i = its position in `order` (each live id exactly once), so
  // that nodes looked up one after another can sit one after another in memory. Links are
  // rewritten; (*new_ids)[old id] = new id, kNil for a freed one. Returns false and changes
  // nothing when `order` is not a permutation of the live ids. Needs the nodes' memory twice
  // while it runs.
  bool renumber(const std::vector<uint32_t>& order, std::vector<uint32_t>* new_ids);

  // Looks up keys[0..n) in order, calling visit(i, id) (kNil: absent) until it returns false.
  // A chain inserted in one call got consecutive ids (and a chain grown by turns takes the
  // ids reserved behind it), so block i's node usually sits right behind block i-1's, in
  // memory already on its way in. The walk follows ids while each next node holds the next
  // key (compared in full, so a wrong guess only costs that compare); where the chain jumps
  // elsewhere, one hash lookup finds it and the walk follows ids again from there. A jump
  // that leads to a short run says the chain is scattered (an index rebuilt in file order,
  // or turns of a block or two once the reserves ran out): the next stretch of keys goes to
  // the pipelined lookups, and a longer one after each further short run, so a scattered
  // chain costs about what it did when only hashing was used. In an A/B at 10 M blocks,
  // chains grown 4 blocks per turn matched in ~33 µs against ~50 µs when the walk hashed
  // everything after the first jump (bench/RESULTS.md, "Index and keys").
  template <class Visit>
  void find_each(const uint8_t* keys, size_t n, Visit&& visit) const {
    constexpr size_t kShortRun = 8, kFirstStretch = 64;
    size_t i = 0, stretch = kFirstStretch;
    while (i < n) {
      uint32_t id = find(keys + i * key_bytes_);
      if (!visit(i, id)) return;
      const size_t run_start = i++;
      for (; i < n && id != kNil && holds_key(id + 1, keys + i * key_bytes_); ++i) {
        if (!visit(i, ++id)) return;
      }
      if (i - run_start >= kShortRun) {
        stretch = kFirstStretch;
      } else if (i < n) {
        const size_t end = std::min(n, i + stretch);
        if (!find_each_hashed(keys, i, end, visit)) return;
        i = end;
        stretch *= 2;
      }
    }
  }

  // Looks up keys[first..n) through the hash table. The lookups are independent, so they are
  // pipelined to overlap their cache misses: the hash slot of key i + 64 and the node of key
  // i + 32 are fetched while key i is compared.
  // Returns false when visit did.
  template <class Visit>
  bool find_each_hashed(const uint8_t* keys, size_t first, size_t n, Visit&& visit) const {
    constexpr size_t kSlotAhead = 64, kNodeAhead = 32, kRing = 128;  // kRing > kSlotAhead
    uint64_t hashes[kRing];
    auto start_lookup = [&](size_t j) {
      hashes[j % kRing] = hash(keys + j * key_bytes_);
      prefetch_slot(hashes[j % kRing]);
    };
    for (size_t j = first; j < n && j < first + kSlotAhead; ++j) start_lookup(j);
    for (size_t i = first; i < n; ++i) {
      if (i + kSlotAhead < n) start_lookup(i + kSlotAhead);
      if (i + kNodeAhead < n) prefetch_node(hashes[(i + kNodeAhead) % kRing]);
      if (!visit(i, find(keys + i * key_bytes_, hashes[i % kRing]))) return false;
    }
    return true;
  }

  void prefetch(const uint8_t* key) const { prefetch_slot(hash(key)); }
  inline void prefetch_slot(uint64_t key_hash) const;
  inline void prefetch_node(uint64_t key_hash) const;

 private:
  static constexpr uint32_t kChunkShift = 16;
  static constexpr uint32_t kChunkNodes = 1u << kChunkShift;

  uint8_t* slot(uint32_t id) const {
    return chunks_[id >> kChunkShift].data() + size_t(id & (kChunkNodes - 1)) * stride_;
  }
  // Hash-table entries: high 32 bits = hash tag, low 32 bits = node id. The home slot is the
  // top bits of the tag, so moving an entry never needs its key.
  size_t home(uint64_t entry) const { return size_t((entry >> 32) >> (32 - table_bits_)); }
  uint32_t alloc_id();
  void grow_table();
  void allocate_table(uint32_t bits);
  void place(uint64_t entry);
  inline bool key_equals(uint32_t id, const uint8_t* key) const;
  // Is id a node whose key is `key`?
  bool holds_key(uint32_t id, const uint8_t* key) const {
    return is_live(id) && key_equals(id, key);
  }
  uint32_t take_reserved(uint32_t id);
  void release_oldest_reservation();
  static uint64_t load_word(const uint8_t* p, size_t n) {
    uint64_t word = 0;
    std::memcpy(&word, p, n);
    return word;
  }
  static uint64_t load_word(const uint8_t* p) {  // a constant size: one load, no call
    uint64_t word;
    std::memcpy(&word, p, sizeof word);
    return word;
  }

  size_t key_bytes_;
  size_t key_words_;     // whole 8-byte words of a key
  bool whole_words_;     // key_bytes_ is a multiple of 8 (every digest key): the fast paths
  size_t stride_;
  std::vector<HugeBuffer> chunks_;
  uint32_t next_id_ = 0;  // ids below it have been handed out at least once
  uint32_t free_head_ = kNil;
  size_t num_nodes_ = 0;
  std::deque<std::pair<uint32_t, uint32_t>> reservations_;  // (first id, count), oldest first
  size_t num_reserved_ = 0;
  HugeBuffer table_buffer_;
  uint64_t* table_ = nullptr;  // 2^table_bits_ entries in table_buffer_
  size_t table_size_ = 0;
  uint32_t table_bits_ = 0;
};

// ---- the lookup path, inline: a match runs it once per key, and as out-of-line calls
// (with a runtime-length memcpy per word) it cost ~35 ns per cache-warm key.

// Keys are usually digests already, but engines may bring their own, so every byte is mixed:
// each 8-byte word times its own odd constant, summed (independent multiplies, so the words
// of a key hash in parallel rather than as a chain of rounds), then one xorshift-multiply
// finaliser spreads the sum into the top bits that pick the home slot and the tag.
inline uint64_t NodeTable::hash(const uint8_t* key) const {
  static constexpr uint64_t kOdd[9] = {
      0x9E3779B97F4A7C15ull, 0xBF58476D1CE4E5B9ull, 0x94D049BB133111EBull,
      0xD6E8FEB86659FD93ull, 0xA0761D6478BD642Full, 0xE7037ED1A0B428DBull,
      0x8EBC6AF09C88C6E3ull, 0x589965CC75374CC3ull, 0x1D8E4E27C47D124Full};
  uint64_t sum = key_bytes_;
  for (size_t w = 0; w < key_words_; ++w) sum += load_word(key + w * 8) * kOdd[w];
  if (!whole_words_) {
    sum += load_word(key + key_words_ * 8, key_bytes_ - key_words_ * 8) * kOdd[key_words_];
  }
  sum ^= sum >> 32;
  sum *= 0xD6E8FEB86659FD93ull;
  sum ^= sum >> 32;
  return sum;
}

inline bool NodeTable::key_equals(uint32_t id, const uint8_t* key) const {
  const uint8_t* stored = this->key(id);
  if (!whole_words_) return std::memcmp(stored, key, key_bytes_) == 0;
  uint64_t diff = 0;
  for (size_t w = 0; w < key_words_; ++w) diff |= load_word(stored + w * 8) ^ load_word(key + w * 8);
  return diff == 0;
}

inline void NodeTable::prefetch_slot(uint64_t key_hash) const {
  __builtin_prefetch(&table_[home(key_hash)]);
}

inline void NodeTable::prefetch_node(uint64_t key_hash) const {
  const uint64_t entry = table_[home(key_hash)];
  if (entry == ~uint64_t{0}) return;  // an empty home slot: the key is absent
  const uint8_t* s = slot(static_cast<uint32_t>(entry));
  __builtin_prefetch(s);
  __builtin_prefetch(s + sizeof(Node) + key_bytes_ - 1);  // the key's last byte
}

inline uint32_t NodeTable::find(const uint8_t* key, uint64_t key_hash) const {
  const uint64_t tag = key_hash >> 32;
  const size_t mask = table_size_ - 1;
  for (size_t i = home(tag << 32);; i = (i + 1) & mask) {
    const uint64_t entry = table_[i];
    if (entry == ~uint64_t{0}) return kNil;
    if ((entry >> 32) == tag && key_equals(static_cast<uint32_t>(entry), key)) {
      return static_cast<uint32_t>(entry);
    }
  }
}

}  // namespace dualkv
