// PrefixIndex: trie structure (links, placeholders, removal) and the batch operations.
// LRU order and eviction live in prefix_index_lru.cpp.
#include "dualkv/prefix_index.h"

#include <string>

namespace dualkv {

PrefixIndex::PrefixIndex(size_t key_bytes, uint64_t capacity_bytes)
    : table_(key_bytes), capacity_bytes_(capacity_bytes) {
  stats_.capacity_bytes = capacity_bytes;
}

Status PrefixIndex::validate_key_bytes(size_t key_bytes) {
  if (key_bytes < kMinKeyBytes || key_bytes > kMaxKeyBytes) {
    return make_status(Code::kInvalidArgument,
                       "key_bytes must be in [16, 64], got " + std::to_string(key_bytes));
  }
  return Status::Ok();
}

// ---- structure -------------------------------------------------------------------------

uint32_t PrefixIndex::find_or_add_present(const uint8_t* key, uint64_t block_bytes,
                                          bool* added, uint32_t after) {
  bool inserted = false;
  const uint32_t id = table_.find_or_insert(key, &inserted, after);
  *added = false;
  if (id == kNil) return kNil;
  Node& n = table_.node(id);
  if (inserted) {
    n.state = kPresent;
    n.block_bytes = block_bytes;
    ++stats_.num_blocks;
    stats_.bytes += block_bytes;
    *added = true;
  } else if (n.state == kPlaceholder) {
    promote(id, block_bytes);
    *added = true;
  }
  return id;
}

void PrefixIndex::promote(uint32_t id, uint64_t block_bytes) {
  Node& n = table_.node(id);
  // Leave the placeholder list; its children stop being orphans.
  if (n.lru_prev != kNil) table_.node(n.lru_prev).lru_next = n.lru_next;
  else placeholder_head_ = n.lru_next;
  if (n.lru_next != kNil) table_.node(n.lru_next).lru_prev = n.lru_prev;
  n.lru_prev = n.lru_next = kNil;
  n.state = kPresent;
  n.block_bytes = block_bytes;
  stats_.orphans -= n.num_children;
  ++stats_.num_blocks;
  stats_.bytes += block_bytes;
}

uint32_t PrefixIndex::find_or_add_placeholder(const uint8_t* key) {
  bool inserted = false;
  const uint32_t id = table_.find_or_insert(key, &inserted);
  if (!inserted) return id;
  Node& n = table_.node(id);
  n.state = kPlaceholder;
  n.lru_next = placeholder_head_;
  if (placeholder_head_ != kNil) table_.node(placeholder_head_).lru_prev = id;
  placeholder_head_ = id;
  return id;
}

// A block gets a parent only when it has none yet (the first link wins: with honest chained
// keys a key has exactly one parent) and the link would not close a cycle.
bool PrefixIndex::can_adopt(uint32_t child, uint32_t parent) const {
  if (child == parent || table_.node(child).parent != kNil) return false;
  if (table_.node(child).num_children == 0) return true;  // not an ancestor of anything
  for (uint32_t x = parent; x != kNil; x = table_.node(x).parent) {
    if (x == child) return false;
  }
  return true;
}

void PrefixIndex::link_child(uint32_t child, uint32_t parent) {
  Node& c = table_.node(child);
  Node& p = table_.node(parent);
  c.parent = parent;
  c.prev_sibling = kNil;
  c.next_sibling = p.first_child;
  if (p.first_child != kNil) table_.node(p.first_child).prev_sibling = child;
  p.first_child = child;
  ++p.num_children;
  if (p.state == kPlaceholder) ++stats_.orphans;
}

void PrefixIndex::unlink_child(uint32_t child) {
  Node& c = table_.node(child);
  const uint32_t parent = c.parent;
  if (parent == kNil) return;
  Node& p = table_.node(parent);
  if (c.prev_sibling != kNil) table_.node(c.prev_sibling).next_sibling = c.next_sibling;
  else p.first_child = c.next_sibling;
  if (c.next_sibling != kNil) table_.node(c.next_sibling).prev_sibling = c.prev_sibling;
  c.parent = c.prev_sibling = c.next_sibling = kNil;
  --p.num_children;
  if (p.state == kPlaceholder) {
    --stats_.orphans;
    drop_placeholder_if_unused(parent);
  }
}

// A placeholder exists only while some block names it as parent.
void PrefixIndex::drop_placeholder_if_unused(uint32_t id) {
  Node& p = table_.node(id);
  if (p.state != kPlaceholder || p.num_children != 0) return;
  if (p.lru_prev != kNil) table_.node(p.lru_prev).lru_next = p.lru_next;
  else placeholder_head_ = p.lru_next;
  if (p.lru_next != kNil) table_.node(p.lru_next).lru_prev = p.lru_prev;
  table_.erase(id);
}

// Frees a present block that has no children left.
void PrefixIndex::free_present(uint32_t id) {
  unlink_child(id);
  Node& n = table_.node(id);
  if (!n.is_pending) lru_unlink(id);
  if (n.pin_count > 0) --stats_.pinned;
  --stats_.num_blocks;
  stats_.bytes -= n.block_bytes;
  table_.erase(id);
}

// Removes root and all its descendants; keys are appended root first (pre-order).
void PrefixIndex::remove_subtree(uint32_t root, std::vector<uint8_t>* removed) {
  std::vector<uint32_t>& order = scratch_;
  order.clear();
  order.push_back(root);
  for (size_t i = 0; i < order.size(); ++i) {
    for (uint32_t c = table_.node(order[i]).first_child; c != kNil;
         c = table_.node(c).next_sibling) {
      order.push_back(c);
    }
  }
  for (uint32_t id : order) append_key(id, removed);
  for (size_t i = order.size(); i-- > 0;) free_present(order[i]);  // leaves first
  stats_.removed += order.size();
}

Status PrefixIndex::compact() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t> order, stack;
  order.reserve(table_.num_nodes());
  for (uint32_t root = 0; root < table_.id_limit(); ++root) {
    const Node& r = table_.node(root);
    if (!table_.is_live(root) || r.parent != kNil) continue;
    stack.push_back(root);
    while (!stack.empty()) {  // pre-order: a node's last-pushed child comes right after it
      const uint32_t x = stack.back();
      stack.pop_back();
      order.push_back(x);
      for (uint32_t c = table_.node(x).first_child; c != kNil; c = table_.node(c).next_sibling) {
        stack.push_back(c);
      }
    }
  }
  std::vector<uint32_t> new_ids;
  if (!table_.renumber(order, &new_ids)) {
    return make_status(Code::kInternal, "prefix index: the trie does not reach every node");
  }
  auto map = [&new_ids](uint32_t id) { return id == kNil ? kNil : new_ids[id]; };
  lru_head_ = map(lru_head_);
  lru_tail_ = map(lru_tail_);
  placeholder_head_ = map(placeholder_head_);
  return Status::Ok();
}

void PrefixIndex::append_key(uint32_t id, std::vector<uint8_t>* out) const {
  const uint8_t* key = table_.key(id);
  out->insert(out->end(), key, key + key_bytes());
}

// ---- batch operations --------------------------------------------------------------------

// Lookups of a batch are independent: prefetching the hash slot of key i + 8 overlaps their
// cache misses instead of paying them one after another.
constexpr size_t kPrefetchAhead = 8;

static Status out_of_ids() {
  return make_status(Code::kOutOfMemory, "prefix index is full (2^32 - 1 nodes)");
}

Status PrefixIndex::insert_chain(const uint8_t* keys, size_t n, const uint8_t* parent_key,
                                 const uint64_t* block_bytes, std::vector<uint8_t>* evicted) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t> ids(n);
  uint32_t prev = kNil;
  if (parent_key != nullptr && n > 0) {
    prev = find_or_add_placeholder(parent_key);  // an absent parent leaves the chain orphaned
    if (prev == kNil) return out_of_ids();
  }
  for (size_t i = 0; i < n && i < kPrefetchAhead; ++i) table_.prefetch(key_at(keys, i));
  bool added = false;
  for (size_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n) table_.prefetch(key_at(keys, i + kPrefetchAhead));
    // Behind its predecessor when the chain kept that id for it (reserve_after below).
    const uint32_t id = find_or_add_present(key_at(keys, i), block_bytes[i], &added, prev);
    if (id == kNil) return out_of_ids();
    // A new block goes right behind its predecessor, so a new chain is already one LRU run
    // and touch() below moves it in O(1).
    if (added && i > 0) lru_insert_after(ids[i - 1], id);
    else if (added) lru_push_front(id);
    if (prev != kNil && can_adopt(id, prev)) link_child(id, prev);
    ids[i] = prev = id;
  }
  if (added) table_.reserve_after(ids[n - 1]);  // the chain's new last block: room for its next
  // A placeholder parent that adopted nobody (keys[0] already had a parent) must not linger.
  if (parent_key != nullptr && n > 0) {
    const uint32_t p = table_.find(parent_key);
    if (p != kNil) drop_placeholder_if_unused(p);
  }
  touch(ids.data(), n);
  evict_over_capacity(evicted);
  return Status::Ok();
}

Status PrefixIndex::insert_edges(const uint8_t* keys, const uint8_t* parent_keys,
                                 const uint8_t* has_parent, size_t n,
                                 const uint64_t* block_bytes, std::vector<uint8_t>* evicted) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t> pending;
  for (size_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n) table_.prefetch(key_at(keys, i + kPrefetchAhead));
    bool added = false;
    const uint32_t id = find_or_add_present(key_at(keys, i), block_bytes[i], &added);
    if (id == kNil) return out_of_ids();
    if (added) {
      table_.node(id).is_pending = 1;
      pending.push_back(id);
    }
    if (!has_parent[i] || table_.node(id).parent != kNil) continue;
    const uint32_t parent = find_or_add_placeholder(key_at(parent_keys, i));
    if (parent == kNil) return out_of_ids();
    if (can_adopt(id, parent)) link_child(id, parent);
    else drop_placeholder_if_unused(parent);  // self-edge or cycle: no fresh placeholder stays
  }
  place_pending_by_depth(pending);
  evict_over_capacity(evicted);
  return Status::Ok();
}

size_t PrefixIndex::match(const uint8_t* keys, size_t n, bool touch_blocks, bool pin_blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t>& ids = scratch_;
  ids.clear();
  uint32_t prev = kNil;
  table_.find_each(keys, n, [&](size_t i, uint32_t id) {
    if (!is_present(id) || (i > 0 && table_.node(id).parent != prev)) return false;
    ids.push_back(prev = id);
    return true;
  });
  const size_t m = ids.size();
  stats_.hits += m;
  stats_.misses += n - m;
  if (pin_blocks) {
    for (uint32_t id : ids) {
      Node& node = table_.node(id);
      if (node.pin_count == kMaxPinCount) continue;  // saturates; never wraps to unpinned
      if (node.pin_count++ == 0) ++stats_.pinned;
    }
  }
  if (touch_blocks) touch(ids.data(), m);
  return m;
}

void PrefixIndex::contains(const uint8_t* keys, size_t n, uint8_t* out) {
  std::lock_guard<std::mutex> lock(mu_);
  table_.find_each(keys, n, [&](size_t i, uint32_t id) {
    out[i] = is_present(id) ? 1 : 0;
    return true;
  });
}

Status PrefixIndex::pin(const uint8_t* keys, size_t n, uint8_t* present) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t id = table_.find(key_at(keys, i));
    present[i] = is_present(id) ? 1 : 0;
    if (!present[i]) continue;
    Node& node = table_.node(id);
    if (node.pin_count == kMaxPinCount) {
      for (size_t j = i; j-- > 0;) {  // undo, so a failed call changes nothing
        if (!present[j]) continue;
        Node& done = table_.node(table_.find(key_at(keys, j)));
        if (--done.pin_count == 0) --stats_.pinned;
      }
      return make_status(Code::kInvalidArgument, "pin count overflow (2^24 - 1 pins)");
    }
    if (node.pin_count++ == 0) ++stats_.pinned;
  }
  return Status::Ok();
}

Status PrefixIndex::unpin(const uint8_t* keys, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t id = table_.find(key_at(keys, i));
    if (!is_present(id)) continue;
    Node& node = table_.node(id);
    if (node.pin_count == 0) {
      for (size_t j = i; j-- > 0;) {  // undo, so a failed call changes nothing
        const uint32_t done = table_.find(key_at(keys, j));
        if (is_present(done) && table_.node(done).pin_count++ == 0) ++stats_.pinned;
      }
      return make_status(Code::kInvalidArgument, "unpin of block " + std::to_string(i) +
                                                     " which is not pinned");
    }
    if (--node.pin_count == 0) --stats_.pinned;
  }
  return Status::Ok();
}

void PrefixIndex::remove(const uint8_t* keys, size_t n, std::vector<uint8_t>* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t id = table_.find(key_at(keys, i));
    if (is_present(id)) remove_subtree(id, removed);
  }
}

void PrefixIndex::drop_orphans(std::vector<uint8_t>* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  // Removing a placeholder's last child frees the placeholder, so read the next one first.
  for (uint32_t p = placeholder_head_; p != kNil;) {
    const uint32_t next = table_.node(p).lru_next;
    // Freeing p with its last child marks it kFree, which ends the loop.
    while (table_.node(p).state == kPlaceholder && table_.node(p).first_child != kNil) {
      remove_subtree(table_.node(p).first_child, removed);
    }
    p = next;
  }
}

IndexStats PrefixIndex::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  IndexStats out = stats_;
  out.memory_bytes = table_.memory_bytes();
  out.reserved_ids = table_.num_reserved();
  return out;
}

}  // namespace dualkv
