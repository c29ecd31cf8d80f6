// PrefixIndex: recency order and eviction.
//
// One doubly linked LRU list holds every present block. Touching a path moves its deepest
// block to the front first and its root last, so every block is behind (older than) all of
// its ancestors. The tail is then an unpinned leaf unless pins get in the way, and a scan from
// the tail meets a parent only after its last child has gone: eviction is O(blocks evicted +
// pinned blocks skipped). Order only affects efficiency: eviction checks "unpinned leaf" on
// every candidate, so a broken order (a rebuild whose children came in an earlier batch than
// their parents) costs extra passes, never a wrong eviction.
#include <algorithm>

#include "dualkv/prefix_index.h"

namespace dualkv {

void PrefixIndex::lru_unlink(uint32_t id) {
  Node& n = table_.node(id);
  if (n.lru_prev != kNil) table_.node(n.lru_prev).lru_next = n.lru_next;
  else lru_head_ = n.lru_next;
  if (n.lru_next != kNil) table_.node(n.lru_next).lru_prev = n.lru_prev;
  else lru_tail_ = n.lru_prev;
  n.lru_prev = n.lru_next = kNil;
}

void PrefixIndex::lru_push_front(uint32_t id) {
  Node& n = table_.node(id);
  n.lru_prev = kNil;
  n.lru_next = lru_head_;
  if (lru_head_ != kNil) table_.node(lru_head_).lru_prev = id;
  else lru_tail_ = id;
  lru_head_ = id;
}

void PrefixIndex::lru_insert_after(uint32_t anchor, uint32_t id) {
  Node& n = table_.node(id);
  Node& a = table_.node(anchor);
  n.lru_prev = anchor;
  n.lru_next = a.lru_next;
  if (a.lru_next != kNil) table_.node(a.lru_next).lru_prev = id;
  else lru_tail_ = id;
  a.lru_next = id;
}

void PrefixIndex::lru_push_back(uint32_t id) {
  Node& n = table_.node(id);
  n.lru_next = kNil;
  n.lru_prev = lru_tail_;
  if (lru_tail_ != kNil) table_.node(lru_tail_).lru_next = id;
  else lru_head_ = id;
  lru_tail_ = id;
}

// Are ids consecutive in the LRU list, in order (ids[i + 1] right behind ids[i])?
bool PrefixIndex::is_lru_run(const uint32_t* ids, size_t n) const {
  for (size_t i = 0; i + 1 < n; ++i) {
    if (table_.node(ids[i]).lru_next != ids[i + 1]) return false;
  }
  return true;
}

// Moves the run first..last (consecutive, in order) to the front in O(1).
void PrefixIndex::splice_to_front(uint32_t first, uint32_t last) {
  if (first == lru_head_) return;
  const uint32_t before = table_.node(first).lru_prev;  // not kNil: first is not the head
  const uint32_t after = table_.node(last).lru_next;
  table_.node(before).lru_next = after;
  if (after != kNil) table_.node(after).lru_prev = before;
  else lru_tail_ = before;
  table_.node(first).lru_prev = kNil;
  table_.node(last).lru_next = lru_head_;
  table_.node(lru_head_).lru_prev = last;
  lru_head_ = first;
}

// ids: a chain (ids[i]'s parent is ids[i-1] when linked). Moves them to the front deepest
// first, then every present ancestor of ids[0] up to its root.
void PrefixIndex::touch(const uint32_t* ids, size_t n) {
  auto to_front = [this](uint32_t id) {
    if (id == lru_head_) return;
    lru_unlink(id);
    lru_push_front(id);
  };
  if (n == 0) return;
  if (is_lru_run(ids, n)) {
    splice_to_front(ids[0], ids[n - 1]);  // the common case: the chain was touched together
  } else {
    for (size_t i = n; i-- > 0;) to_front(ids[i]);
  }
  for (uint32_t x = table_.node(ids[0]).parent; is_present(x); x = table_.node(x).parent) {
    to_front(x);
  }
}

// Blocks added by insert_edges go behind every block already here (a rebuild knows nothing of
// their recency), ordered by depth within the batch so that parents are ahead of children.
// While pending, a node's lru_prev holds its depth (kNil = not computed yet).
void PrefixIndex::place_pending_by_depth(const std::vector<uint32_t>& pending) {
  for (uint32_t id : pending) table_.node(id).lru_prev = kNil;
  auto pending_parent = [this](uint32_t id) {
    const uint32_t p = table_.node(id).parent;
    return (p != kNil && table_.node(p).is_pending) ? p : kNil;
  };
  uint32_t max_depth = 0;
  std::vector<uint32_t> path;
  for (uint32_t id : pending) {
    path.clear();
    uint32_t x = id;
    while (x != kNil && table_.node(x).lru_prev == kNil) {
      path.push_back(x);
      x = pending_parent(x);
    }
    uint32_t depth = (x == kNil) ? 0 : table_.node(x).lru_prev + 1;
    for (size_t i = path.size(); i-- > 0; ++depth) table_.node(path[i]).lru_prev = depth;
    max_depth = std::max(max_depth, table_.node(id).lru_prev);
  }
  // Counting sort by depth, then append shallow to deep so the deepest end up at the tail.
  std::vector<uint32_t> starts(size_t{max_depth} + 2, 0);
  for (uint32_t id : pending) ++starts[table_.node(id).lru_prev + 1];
  for (size_t d = 1; d < starts.size(); ++d) starts[d] += starts[d - 1];
  std::vector<uint32_t> by_depth(pending.size());
  for (uint32_t id : pending) by_depth[starts[table_.node(id).lru_prev]++] = id;
  for (uint32_t id : by_depth) {
    table_.node(id).is_pending = 0;
    lru_push_back(id);
  }
}

bool PrefixIndex::is_evictable(uint32_t id) const {
  const Node& n = table_.node(id);
  return n.state == kPresent && n.first_child == kNil && n.pin_count == 0;
}

uint64_t PrefixIndex::evict_locked(uint64_t num_bytes, std::vector<uint8_t>* evicted) {
  uint64_t freed = 0;
  bool progress = true;
  while (freed < num_bytes && progress) {
    progress = false;
    for (uint32_t x = lru_tail_; x != kNil && freed < num_bytes;) {
      const uint32_t older_next = table_.node(x).lru_prev;  // read before x is freed
      if (is_evictable(x)) {
        append_key(x, evicted);
        freed += table_.node(x).block_bytes;
        ++stats_.evictions;
        stats_.evicted_bytes += table_.node(x).block_bytes;
        free_present(x);
        progress = true;
      }
      x = older_next;
    }
  }
  return freed;
}

void PrefixIndex::evict_over_capacity(std::vector<uint8_t>* evicted) {
  if (capacity_bytes_ > 0 && stats_.bytes > capacity_bytes_) {
    evict_locked(stats_.bytes - capacity_bytes_, evicted);
  }
}

uint64_t PrefixIndex::evict(uint64_t num_bytes, std::vector<uint8_t>* evicted) {
  std::lock_guard<std::mutex> lock(mu_);
  return evict_locked(num_bytes, evicted);
}

}  // namespace dualkv
