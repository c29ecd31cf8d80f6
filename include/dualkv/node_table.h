// NodeTable: the storage under the prefix index. Nodes live in fixed-size chunks (ids are
// 32-bit, a node never moves, growth never copies), each followed by its key in the same slot;
// an open-addressing hash table maps keys to node ids. Freed ids go on a free list.
//
// Memory per node with 32-byte keys: a 72-byte slot plus 8 bytes per hash slot at a load
// factor of 3/8..3/4, i.e. about 80-93 bytes; nothing else is allocated per node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace dualkv {

constexpr uint32_t kNil = 0xFFFFFFFFu;

enum NodeState : uint32_t {
  kFree = 0,
  kPresent = 1,      // a block the index holds
  kPlaceholder = 2,  // a parent key whose block is not (yet) here; holds its children's links
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

  // Node id of key, or kNil.
  uint32_t find(const uint8_t* key) const;
  // Adds a node for a key that is not in the table; its Node is zeroed except the links (kNil).
  // Returns kNil when 2^32 - 1 nodes already exist.
  uint32_t insert(const uint8_t* key);
  // Removes the node's key from the table and frees its id.
  void erase(uint32_t id);

  // Where a key will be looked up; prefetching it lets a batch overlap its cache misses.
  void prefetch(const uint8_t* key) const;

 private:
  static constexpr uint32_t kChunkShift = 16;
  static constexpr uint32_t kChunkNodes = 1u << kChunkShift;

  uint8_t* slot(uint32_t id) const {
    return chunks_[id >> kChunkShift].get() + size_t(id & (kChunkNodes - 1)) * stride_;
  }
  uint64_t hash(const uint8_t* key) const;
  // Hash-table entries: high 32 bits = hash tag, low 32 bits = node id. The home slot is the
  // top bits of the tag, so moving an entry never needs its key.
  size_t home(uint64_t entry) const { return size_t((entry >> 32) >> (32 - table_bits_)); }
  uint32_t alloc_id();
  void grow_table();
  void place(uint64_t entry);

  size_t key_bytes_;
  size_t stride_;
  std::vector<std::unique_ptr<uint8_t[]>> chunks_;
  uint32_t next_id_ = 0;  // ids below it have been handed out at least once
  uint32_t free_head_ = kNil;
  size_t num_nodes_ = 0;
  std::vector<uint64_t> table_;
  uint32_t table_bits_ = 0;
};

}  // namespace dualkv
