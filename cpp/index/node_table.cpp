// NodeTable: chunked node slots with inline keys, and a linear-probing hash table of 32-bit
// node ids with backward-shift deletion (no tombstones, so lookups never slow down with churn).
#include "dualkv/node_table.h"

#include <algorithm>

namespace dualkv {

namespace {

constexpr uint64_t kEmpty = ~uint64_t{0};  // id kNil: no real entry ever has it
constexpr uint32_t kMinTableBits = 4;

inline uint32_t entry_id(uint64_t entry) { return static_cast<uint32_t>(entry); }

}  // namespace

NodeTable::NodeTable(size_t key_bytes)
    : key_bytes_(key_bytes),
      key_words_(key_bytes / 8),
      whole_words_(key_bytes % 8 == 0),
      stride_((sizeof(Node) + key_bytes + 7) & ~size_t{7}) {
  allocate_table(kMinTableBits);
}

void NodeTable::allocate_table(uint32_t bits) {
  table_bits_ = bits;
  table_size_ = size_t{1} << bits;
  table_buffer_ = HugeBuffer(table_size_ * sizeof(uint64_t), /*huge=*/true);
  table_ = reinterpret_cast<uint64_t*>(table_buffer_.data());
  std::memset(table_, 0xFF, table_size_ * sizeof(uint64_t));  // every entry kEmpty
}

size_t NodeTable::memory_bytes() const {
  return chunks_.size() * kChunkNodes * stride_ + table_size_ * sizeof(uint64_t);
}

uint32_t NodeTable::alloc_id() {
  if (free_head_ != kNil) {
    const uint32_t id = free_head_;
    free_head_ = node(id).lru_next;
    return id;
  }
  if (next_id_ == kNil) return kNil;
  if ((next_id_ >> kChunkShift) == chunks_.size()) {
    // Pages become resident only as nodes are written: a fresh chunk costs address space.
    chunks_.emplace_back(size_t{kChunkNodes} * stride_, /*huge=*/true);
  }
  return next_id_++;
}

void NodeTable::place(uint64_t entry) {
  const size_t mask = table_size_ - 1;
  size_t i = home(entry);
  while (table_[i] != kEmpty) i = (i + 1) & mask;
  table_[i] = entry;
}

void NodeTable::grow_table() {
  HugeBuffer old = std::move(table_buffer_);
  const auto* old_entries = reinterpret_cast<const uint64_t*>(old.data());
  const size_t old_size = table_size_;
  allocate_table(table_bits_ + 1);
  for (size_t i = 0; i < old_size; ++i) {
    if (old_entries[i] != kEmpty) place(old_entries[i]);
  }
}

uint32_t NodeTable::find_or_insert(const uint8_t* key, bool* inserted, uint32_t after) {
  *inserted = false;
  if ((num_nodes_ + 1) * 4 > table_size_ * 3) {
    if (table_bits_ >= 32) return kNil;
    grow_table();
  }
  const uint64_t tag = hash(key) >> 32;
  const size_t mask = table_size_ - 1;
  size_t i = home(tag << 32);
  for (;; i = (i + 1) & mask) {
    const uint64_t entry = table_[i];
    if (entry == kEmpty) break;
    if ((entry >> 32) == tag && key_equals(entry_id(entry), key)) {
      return entry_id(entry);
    }
  }
  uint32_t id = after != kNil ? take_reserved(after + 1) : kNil;
  if (id == kNil) id = alloc_id();
  if (id == kNil) return kNil;
  uint8_t* s = slot(id);
  Node& n = *reinterpret_cast<Node*>(s);
  std::memset(&n, 0, sizeof(Node));
  n.parent = n.first_child = n.next_sibling = n.prev_sibling = kNil;
  n.lru_prev = n.lru_next = kNil;
  std::memcpy(s + sizeof(Node), key, key_bytes_);
  table_[i] = (tag << 32) | id;  // the empty slot that ended the probe
  ++num_nodes_;
  *inserted = true;
  return id;
}

void NodeTable::erase(uint32_t id) {
  const size_t mask = table_size_ - 1;
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

uint32_t NodeTable::take_reserved(uint32_t id) {
  if (id >= next_id_ || node(id).state != kReserved) return kNil;
  node(id).state = kFree;
  --num_reserved_;
  return id;
}

void NodeTable::reserve_after(uint32_t last) {
  constexpr uint32_t kRun = 32;  // about 8 turns of an agent adding ~4 blocks a turn
  if (last == kNil || last + 1 != next_id_ || next_id_ > kNil - kRun) return;
  const size_t cap = std::max<size_t>(4 * kRun, num_nodes_ / 8);
  while (num_reserved_ + kRun > cap && !reservations_.empty()) release_oldest_reservation();
  if (num_reserved_ + kRun > cap) return;
  for (uint32_t k = 0; k < kRun; ++k) {
    if ((next_id_ >> kChunkShift) == chunks_.size()) {
      chunks_.emplace_back(size_t{kChunkNodes} * stride_, /*huge=*/true);
    }
    Node& n = node(next_id_++);
    std::memset(&n, 0, sizeof(Node));
    n.state = kReserved;
  }
  reservations_.emplace_back(last + 1, kRun);
  num_reserved_ += kRun;
}

// The ids of the oldest reservation that its chain has not taken go to the free list.
void NodeTable::release_oldest_reservation() {
  const auto [first, count] = reservations_.front();
  reservations_.pop_front();
  for (uint32_t id = first; id < first + count; ++id) {
    Node& n = node(id);
    if (n.state != kReserved) continue;  // taken
    n.state = kFree;
    n.lru_next = free_head_;
    free_head_ = id;
    --num_reserved_;
  }
}

bool NodeTable::renumber(const std::vector<uint32_t>& order, std::vector<uint32_t>* new_ids) {
  std::vector<uint32_t>& to = *new_ids;
  to.assign(next_id_, kNil);
  if (order.size() != num_nodes_) return false;
  for (size_t i = 0; i < order.size(); ++i) {
    const uint32_t id = order[i];
    if (!is_live(id) || to[id] != kNil) return false;
    to[id] = static_cast<uint32_t>(i);
  }
  auto map = [&to](uint32_t id) { return id == kNil ? kNil : to[id]; };
  constexpr size_t kAhead = 16;  // the old slots are read in random order
  std::vector<HugeBuffer> chunks;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i + kAhead < order.size()) __builtin_prefetch(slot(order[i + kAhead]));
    if ((i >> kChunkShift) == chunks.size()) {
      chunks.emplace_back(size_t{kChunkNodes} * stride_, /*huge=*/true);
    }
    uint8_t* dst = chunks.back().data() + (i & (kChunkNodes - 1)) * stride_;
    std::memcpy(dst, slot(order[i]), stride_);
    Node& n = *reinterpret_cast<Node*>(dst);
    n.parent = map(n.parent);
    n.first_child = map(n.first_child);
    n.next_sibling = map(n.next_sibling);
    n.prev_sibling = map(n.prev_sibling);
    n.lru_prev = map(n.lru_prev);
    n.lru_next = map(n.lru_next);
  }
  for (size_t i = 0; i < table_size_; ++i) {
    if (table_[i] != kEmpty) table_[i] = (table_[i] & ~uint64_t{0xFFFFFFFF}) | to[entry_id(table_[i])];
  }
  chunks_ = std::move(chunks);
  next_id_ = static_cast<uint32_t>(order.size());
  free_head_ = kNil;
  reservations_.clear();  // reserved and freed ids are gone: only live nodes were copied
  num_reserved_ = 0;
  return true;
}

}  // namespace dualkv
