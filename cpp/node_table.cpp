// NodeTable: chunked node slots with inline keys, and a linear-probing hash table of 32-bit
// node ids with backward-shift deletion (no tombstones, so lookups never slow down with churn).
#include "dualkv/node_table.h"

namespace dualkv {

namespace {

constexpr uint64_t kEmpty = ~uint64_t{0};  // id kNil: no real entry ever has it
constexpr uint32_t kMinTableBits = 4;

inline uint64_t load_word(const uint8_t* p, size_t n) {
  uint64_t word = 0;
  std::memcpy(&word, p, n);
  return word;
}

inline uint32_t entry_id(uint64_t entry) { return static_cast<uint32_t>(entry); }

}  // namespace

NodeTable::NodeTable(size_t key_bytes)
    : key_bytes_(key_bytes), stride_((sizeof(Node) + key_bytes + 7) & ~size_t{7}) {
  table_bits_ = kMinTableBits;
  table_.assign(size_t{1} << table_bits_, kEmpty);
}

size_t NodeTable::memory_bytes() const {
  return chunks_.size() * kChunkNodes * stride_ + table_.size() * sizeof(uint64_t);
}

// Keys are usually digests already, but engines may bring their own, so every byte is mixed
// (a multiply-xorshift per 8-byte word; four rounds for a 32-byte key).
uint64_t NodeTable::hash(const uint8_t* key) const {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ key_bytes_;
  for (size_t i = 0; i < key_bytes_; i += 8) {
    const size_t n = key_bytes_ - i < 8 ? key_bytes_ - i : 8;
    h = (h ^ load_word(key + i, n)) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return h;
}

void NodeTable::prefetch(const uint8_t* key) const {
  const uint64_t tagged = hash(key) & 0xFFFFFFFF00000000ull;
  __builtin_prefetch(&table_[home(tagged)]);
}

uint32_t NodeTable::find(const uint8_t* key) const {
  const uint64_t tag = hash(key) >> 32;
  const size_t mask = table_.size() - 1;
  for (size_t i = home(tag << 32);; i = (i + 1) & mask) {
    const uint64_t entry = table_[i];
    if (entry == kEmpty) return kNil;
    if ((entry >> 32) == tag && std::memcmp(this->key(entry_id(entry)), key, key_bytes_) == 0) {
      return entry_id(entry);
    }
  }
}

uint32_t NodeTable::alloc_id() {
  if (free_head_ != kNil) {
    const uint32_t id = free_head_;
    free_head_ = node(id).lru_next;
    return id;
  }
  if (next_id_ == kNil) return kNil;
  if ((next_id_ >> kChunkShift) == chunks_.size()) {
    // new[] without () leaves the chunk uninitialised, so its pages become resident only as
    // nodes are written: a fresh chunk costs address space, not memory.
    chunks_.emplace_back(new uint8_t[size_t{kChunkNodes} * stride_]);
  }
  return next_id_++;
}

void NodeTable::place(uint64_t entry) {
  const size_t mask = table_.size() - 1;
  size_t i = home(entry);
  while (table_[i] != kEmpty) i = (i + 1) & mask;
  table_[i] = entry;
}

void NodeTable::grow_table() {
  std::vector<uint64_t> old(size_t{1} << (table_bits_ + 1), kEmpty);
  old.swap(table_);
  ++table_bits_;
  for (uint64_t entry : old) {
    if (entry != kEmpty) place(entry);
  }
}

uint32_t NodeTable::insert(const uint8_t* key) {
  if ((num_nodes_ + 1) * 4 > table_.size() * 3) {
    if (table_bits_ >= 32) return kNil;
    grow_table();
  }
  const uint32_t id = alloc_id();
  if (id == kNil) return kNil;
  uint8_t* s = slot(id);
  Node& n = *reinterpret_cast<Node*>(s);
  std::memset(&n, 0, sizeof(Node));
  n.parent = n.first_child = n.next_sibling = n.prev_sibling = kNil;
  n.lru_prev = n.lru_next = kNil;
  std::memcpy(s + sizeof(Node), key, key_bytes_);
  place((hash(key) & 0xFFFFFFFF00000000ull) | id);
  ++num_nodes_;
  return id;
}

void NodeTable::erase(uint32_t id) {
  const size_t mask = table_.size() - 1;
  const uint64_t tag = hash(key(id)) >> 32;
  size_t i = home(tag << 32);
  while (entry_id(table_[i]) != id) i = (i + 1) & mask;
  // Backward shift: pull later entries of the probe run into the hole unless that would move
  // an entry before its home slot.
  for (size_t j = (i + 1) & mask; table_[j] != kEmpty; j = (j + 1) & mask) {
    const size_t h = home(table_[j]);
    const bool hole_between = (i <= j) ? (h <= i || h > j) : (h <= i && h > j);
    if (hole_between) {
      table_[i] = table_[j];
      i = j;
    }
  }
  table_[i] = kEmpty;
  Node& n = node(id);
  n.state = kFree;
  n.lru_next = free_head_;
  free_head_ = id;
  --num_nodes_;
}

}  // namespace dualkv
