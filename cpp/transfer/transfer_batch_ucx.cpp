// Agent data path: validated descriptor batches posted as one-sided puts/gets, an endpoint
// flush per batch, then the (request, layer) notice, sent strictly in submission order per
// peer so a receiver sees layer l only after layer l's bytes and every earlier notice.
// The submitting thread posts under worker_mu_; over shared memory the copies, the flush and
// the eager notice all complete inline, so a notice costs no thread hand-off on either side.
#include <sched.h>

#include <algorithm>
#include <cstring>

#include "dualkv/transfer.h"
#include "transfer_internal.h"

namespace dualkv {

// A notice waiter spins this long without yielding, then yields every 16 polls: over shared
// memory a notice lands within microseconds and a sched_yield costs about as much, but when
// both sides share one core a longer hot spin holds the peer off for all of it (measured on
// the 2-core host, 64 KiB C++ ping-pong one-way: 2.1-4 us at 5 us hot, ~20 us at 15 us hot,
// ~57 us at 50 us hot; 64 B: 4.5 us yielding from the start).
constexpr int64_t kHotSpinUs = 5;

static Status bad(const std::string& msg) { return make_status(Code::kInvalidArgument, msg); }

Status Agent::validate(const RmaBatch& batch, int64_t block_bytes) {
  std::lock_guard<std::mutex> lock(state_mu_);
  return validate_locked(batch, block_bytes);
}

Status Agent::validate_locked(const RmaBatch& batch, int64_t block_bytes) {
  auto peer_it = peers_.find(batch.peer);
  if (peer_it == peers_.end())
    return make_status(Code::kNotFound, "unknown peer " + std::to_string(batch.peer));
  Peer* peer = peer_it->second.get();
  if (!peer->failure.ok()) return peer->failure;
  if (batch.descs.empty()) {
    if (!batch.has_notice) return bad("empty batch without a notice");
    return Status::Ok();
  }
  auto local_it = regions_.find(batch.local_region);
  if (local_it == regions_.end())
    return bad("local region " + std::to_string(batch.local_region) + " is not registered");
  auto remote_it = peer->regions.find(batch.remote_region);
  if (remote_it == peer->regions.end())
    return bad("remote region " + std::to_string(batch.remote_region) + " unknown for this peer");
  if (remote_it->second.is_stale)
    return bad("stale rkey: the peer deregistered region " + std::to_string(batch.remote_region));
  const int64_t local_size = local_it->second->info.size;
  const int64_t remote_size = remote_it->second.size;
  for (size_t i = 0; i < batch.descs.size(); ++i) {
    const RmaDesc& d = batch.descs[i];
    auto where = [i] { return "descriptor " + std::to_string(i) + ": "; };  // only on error
    if (d.length <= 0) return bad(where() + "length must be > 0");
    if (block_bytes > 0 && d.length % block_bytes != 0)
      return bad(where() + "length " + std::to_string(d.length) + " is not a multiple of " +
                 std::to_string(block_bytes));
    if (d.local_offset < 0 || d.local_offset > local_size - d.length)
      return bad(where() + "local range outside the registered region");
    if (d.remote_offset < 0 || d.remote_offset > remote_size - d.length)
      return bad(where() + "remote range outside the peer's registered region");
  }
  return Status::Ok();
}

// Looks up a validated batch's peer and regions and pins the local region until the batch
// finishes (deregister waits for it).
Status Agent::resolve_locked(const RmaBatch& rma, Batch* batch) {
  Peer* peer = find_peer(rma.peer);
  if (peer == nullptr) return make_status(Code::kNotFound, "unknown peer");
  if (!peer->failure.ok()) return peer->failure;
  if (rma.descs.empty()) return Status::Ok();
  auto local_it = regions_.find(rma.local_region);
  auto remote_it = peer->regions.find(rma.remote_region);
  if (local_it == regions_.end() || remote_it == peer->regions.end() ||
      remote_it->second.is_stale)
    return bad("region vanished between validation and posting");
  batch->local = local_it->second.get();
  batch->local->inflight.fetch_add(1);
  batch->local_base = batch->local->info.base;
  batch->memh = batch->local->memh;
  batch->remote_base = remote_it->second.base;
  batch->rkey = remote_it->second.rkey;
  return Status::Ok();
}

Status Agent::post(RmaBatch rma, DoneCallback done) {
  if (closed_) return make_status(Code::kUnavailable, "agent is closed");
  auto batch = std::make_shared<Batch>();
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    Status st = resolve_locked(rma, batch.get());
    if (!st.ok()) return st;
  }
  batch->agent = this;
  batch->rma = std::move(rma);
  batch->done = std::move(done);
  batch->deadline_ns = deadline_after(config_.op_timeout_s);
  bool is_pending;
  {
    std::lock_guard<std::recursive_mutex> lock(worker_mu_);
    if (worker_ == nullptr) {
      if (batch->local != nullptr) batch->local->inflight.fetch_sub(1);  // never posted
      return make_status(Code::kUnavailable, "agent is closed");
    }
    start_batch(batch);
    is_pending = !batch->is_finished;
  }
  if (is_pending) wake();  // the progress thread completes what UCX did not finish inline
  return Status::Ok();
}

Status Agent::submit(RmaBatch rma, int64_t block_bytes, uint64_t* handle) {
  Status st = validate(rma, block_bytes);
  if (!st.ok()) return st;
  auto completion = std::make_shared<Completion>();
  st = post(std::move(rma), [completion](const Status& s) { completion->finish(s); });
  if (!st.ok()) return st;
  *handle = handles_.add(completion);
  return Status::Ok();
}

Status Agent::send_notice(uint64_t peer_id, int64_t request_id, int64_t layer, uint64_t* handle) {
  RmaBatch rma;
  rma.peer = peer_id;
  rma.has_notice = true;
  rma.request_id = request_id;
  rma.layer = layer;
  return submit(std::move(rma), 0, handle);
}

// ---- under worker_mu_ ------------------------------------------------------------------

void Agent::start_batch(const std::shared_ptr<Batch>& batch) {
  Peer* peer = find_peer(batch->rma.peer);
  if (peer == nullptr || peer->ep == nullptr || !peer->failure.ok()) {
    finish_batch(batch.get(), peer && !peer->failure.ok()
                                  ? peer->failure
                                  : make_status(Code::kPeerDisconnected, "peer is gone"));
    return;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
  param.memh = batch->memh;
  for (const RmaDesc& d : batch->rma.descs) {
    void* local = reinterpret_cast<void*>(batch->local_base + d.local_offset);
    uint64_t remote = batch->remote_base + d.remote_offset;
    ucs_status_ptr_t req =
        batch->rma.is_get
            ? ucp_get_nbx(peer->ep, local, size_t(d.length), remote, batch->rkey, &param)
            : ucp_put_nbx(peer->ep, local, size_t(d.length), remote, batch->rkey, &param);
    if (UCS_PTR_IS_ERR(req)) {
      batch->status = ucx_error(batch->rma.is_get ? "ucp_get_nbx" : "ucp_put_nbx",
                                UCS_PTR_STATUS(req));
      break;
    }
    if (req != nullptr) ucp_request_free(req);  // completion is observed through the flush
  }
  peer->in_order.push_back(batch);
  num_pending_.fetch_add(1);
  ucp_request_param_t flush{};
  flush.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  flush.cb.send = &Agent::on_flushed;
  flush.user_data = batch.get();
  ucs_status_ptr_t req = ucp_ep_flush_nbx(peer->ep, &flush);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) {
    if (UCS_PTR_IS_ERR(req) && batch->status.ok())
      batch->status = ucx_error("ucp_ep_flush_nbx", UCS_PTR_STATUS(req));
    batch->is_flushed = true;
    complete_in_order(peer);
  } else {
    batch->ucx_outstanding++;
  }
}

void Agent::on_flushed(void* request, ucs_status_t status, void* user_data) {
  auto* batch = static_cast<Batch*>(user_data);
  batch->ucx_outstanding--;
  batch->is_flushed = true;
  if (status != UCS_OK && batch->status.ok()) batch->status = ucx_error("flush", status);
  ucp_request_free(request);
  if (Peer* peer = batch->agent->find_peer(batch->rma.peer)) batch->agent->complete_in_order(peer);
}

void Agent::on_notice_sent(void* request, ucs_status_t status, void* user_data) {
  auto* batch = static_cast<Batch*>(user_data);
  batch->ucx_outstanding--;
  if (status != UCS_OK && batch->status.ok()) batch->status = ucx_error("notice", status);
  ucp_request_free(request);
  if (Peer* peer = batch->agent->find_peer(batch->rma.peer)) batch->agent->complete_in_order(peer);
}

// The byte range a put batch wrote into its remote region, for the receiver to check.
static void put_range(const RmaBatch& rma, NoticeHeader* h) {
  if (rma.descs.empty()) return;
  int64_t lo = rma.descs[0].remote_offset, hi = lo + rma.descs[0].length;
  for (const RmaDesc& d : rma.descs) {
    lo = std::min(lo, d.remote_offset);
    hi = std::max(hi, d.remote_offset + d.length);
  }
  h->region_id = rma.remote_region;
  h->lo = lo;
  h->hi = hi;
}

// Finishes batches from the front of the peer's queue while they are flushed; a notice is
// sent (put) or recorded (get) before its batch finishes, so notices keep submission order.
void Agent::complete_in_order(Peer* peer) {
  while (!peer->in_order.empty()) {
    Batch* batch = peer->in_order.front().get();
    if (!batch->is_flushed || batch->ucx_outstanding > 0) return;
    bool wants_notice = batch->rma.has_notice && batch->status.ok() && !batch->is_finished;
    if (wants_notice && !batch->is_notice_sent) {
      batch->is_notice_sent = true;
      if (batch->rma.is_get) {
        record_notice(peer->uid, batch->rma.request_id, batch->rma.layer);
      } else if (peer->ep != nullptr) {
        batch->header = {kNoticeMagic, kLayerNotice, uid_, batch->rma.request_id,
                         batch->rma.layer, 0, 0, 0};
        put_range(batch->rma, &batch->header);
        ucp_request_param_t param{};
        param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                             UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = UCP_AM_SEND_FLAG_EAGER;
        param.cb.send = &Agent::on_notice_sent;
        param.user_data = batch;
        ucs_status_ptr_t req =
            ucp_am_send_nbx(peer->ep, kNoticeAmId, &batch->header, sizeof(batch->header),
                            nullptr, 0, &param);
        if (UCS_PTR_IS_ERR(req)) {
          batch->status = ucx_error("ucp_am_send_nbx", UCS_PTR_STATUS(req));
        } else if (req != nullptr) {
          batch->ucx_outstanding++;
          return;  // on_notice_sent resumes the queue
        }
      }
    }
    finish_batch(batch, batch->status);
    peer->in_order.pop_front();
    num_pending_.fetch_sub(1);
  }
}

void Agent::finish_batch(Batch* batch, Status status) {
  if (batch->is_finished) return;
  batch->is_finished = true;
  if (batch->local != nullptr) batch->local->inflight.fetch_sub(1);
  batch->local = nullptr;
  if (batch->done) batch->done(status);
}

void Agent::send_control(Peer* peer, uint32_t kind, int64_t request_id, int64_t value) {
  struct Pending {
    NoticeHeader header;
  };
  auto* pending = new Pending{{kNoticeMagic, kind, uid_, request_id, value, 0, 0, 0}};
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = [](void* req, ucs_status_t, void* user_data) {
    delete static_cast<Pending*>(user_data);
    ucp_request_free(req);
  };
  param.user_data = pending;
  ucs_status_ptr_t req = ucp_am_send_nbx(peer->ep, kNoticeAmId, &pending->header,
                                         sizeof(pending->header), nullptr, 0, &param);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) delete pending;
}

// Fails the peers whose oldest unfinished batch passed its deadline (a hung or dead peer
// that no transport error reported yet), and drops orphaned batches once UCX is done.
void Agent::check_deadlines() {
  check_processes();
  int64_t now = now_ns();
  for (auto& [id, peer] : peers_) {
    for (auto& batch : peer->in_order) {
      if (!batch->is_finished && now > batch->deadline_ns) {
        fail_peer(peer.get(), make_status(Code::kTimedOut, "transfer passed its deadline"));
        uint64_t peer_id = id;
        run_later([this, peer_id] {
          if (Peer* p = find_peer(peer_id)) close_endpoint(p);
        });
        break;
      }
    }
  }
  reap_closing();
  std::lock_guard<std::mutex> lock(state_mu_);
  for (size_t i = 0; i < orphans_.size();) {
    if (orphans_[i]->ucx_outstanding == 0) {
      orphans_[i] = orphans_.back();
      orphans_.pop_back();
    } else {
      ++i;
    }
  }
}

// ---- notices ---------------------------------------------------------------------------

ucs_status_t Agent::on_am(void* arg, const void* header, size_t header_length, void*, size_t,
                          const ucp_am_recv_param_t*) {
  auto* self = static_cast<Agent*>(arg);
  if (header_length != sizeof(NoticeHeader)) return UCS_OK;  // not ours: ignore
  NoticeHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kNoticeMagic) return UCS_OK;
  if (!self->is_connected(h.sender_uid)) {
    // Not a peer this agent connected (through the rendezvous): refused and counted. The
    // uid is what the sender claims; UCX does not authenticate who sent an active message.
    self->num_refused_notices_.fetch_add(1, std::memory_order_relaxed);
    return UCS_OK;
  }
  if (h.kind == kLayerNotice && !self->is_inside_region(h)) {
    // The sender's idea of our region is not what we registered (altered peer info): its
    // bytes may have landed elsewhere, so the layer is not reported as landed.
    self->num_out_of_range_notices_.fetch_add(1, std::memory_order_relaxed);
    return UCS_OK;
  }
  if (h.kind == kLayerNotice) self->record_notice(h.sender_uid, h.request_id, h.layer);
  if (h.kind == kRevokeRegion) self->mark_stale(h.sender_uid, uint64_t(h.layer));
  return UCS_OK;
}

bool Agent::is_connected(uint64_t uid) {
  std::lock_guard<std::mutex> lock(state_mu_);
  for (auto& [id, peer] : peers_)
    if (peer->uid == uid) return true;
  return false;
}

bool Agent::is_inside_region(const NoticeHeader& h) {
  if (h.region_id == 0) return h.lo == 0 && h.hi == 0;  // a notice without data
  std::lock_guard<std::mutex> lock(state_mu_);
  auto it = regions_.find(h.region_id);
  return it != regions_.end() && h.lo >= 0 && h.lo < h.hi && h.hi <= it->second->info.size;
}

void Agent::record_notice(uint64_t, int64_t request_id, int64_t layer) {
  {
    std::lock_guard<std::mutex> lock(notice_mu_);
    if (arrived_set_[request_id].insert(layer).second) arrived_[request_id].push_back(layer);
  }
  notice_seq_.fetch_add(1, std::memory_order_release);
  notice_cv_.notify_all();
}

void Agent::mark_stale(uint64_t sender_uid, uint64_t region_id) {
  std::lock_guard<std::mutex> lock(state_mu_);
  regions_gen_.fetch_add(1, std::memory_order_release);
  for (auto& [id, peer] : peers_) {
    if (peer->uid != sender_uid) continue;
    auto it = peer->regions.find(region_id);
    if (it != peer->regions.end()) it->second.is_stale = true;
  }
}

// Spins for spin_us progressing the worker itself (a notice over shared memory lands in a
// few microseconds, far sooner than two thread wake-ups), then sleeps on the condition
// variable while the progress thread delivers.
Status Agent::wait_notice(int64_t request_id, int64_t layer, uint64_t peer_id, int64_t deadline_ns) {
  auto arrived = [&] { return notice_arrived_locked(request_id, layer); };
  if (has_notice(request_id, layer)) return Status::Ok();
  if (config_.spin_us > 0 && drive_until_notice(arrived, deadline_ns)) return Status::Ok();
  std::unique_lock<std::mutex> lock(notice_mu_);
  while (true) {
    if (arrived()) return Status::Ok();
    if (peer_id != 0) {
      Status st = peer_status(peer_id);
      if (!st.ok()) return st;
    }
    int64_t left = deadline_ns - now_ns();
    if (left <= 0)
      return make_status(Code::kTimedOut, "no notice for request " + std::to_string(request_id) +
                                              " layer " + std::to_string(layer));
    notice_cv_.wait_for(lock, std::chrono::nanoseconds(std::min<int64_t>(left, 20000000)));
  }
}

template <class Arrived>
bool Agent::drive_until_notice(const Arrived& arrived, int64_t deadline_ns) {
  num_drivers_.fetch_add(1);
  uint64_t seen = ~uint64_t(0);
  bool found = false;
  const int64_t start = now_ns();
  const int64_t until = std::min(start + config_.spin_us * 1000, deadline_ns);
  const int64_t hot_until = start + std::min<int64_t>(config_.spin_us, kHotSpinUs) * 1000;
  for (int64_t i = 0; !found; ++i) {
    if (worker_mu_.try_lock()) {
      if (worker_ != nullptr && !closed_) progress_worker();
      worker_mu_.unlock();
    }
    uint64_t seq = notice_seq_.load(std::memory_order_acquire);
    if (seq != seen) {
      seen = seq;
      std::lock_guard<std::mutex> lock(notice_mu_);
      found = arrived();
    }
    if ((i & 15) == 15) {
      int64_t now = now_ns();
      if (now > until) break;
      if (now > hot_until) sched_yield();  // a late notice: let the others run too
    }
  }
  num_drivers_.fetch_sub(1);
  // The progress thread takes over if this caller goes to sleep or left work in flight; it
  // checks on its own every millisecond otherwise, so a found notice costs no wake-up.
  if (!found || num_pending_.load() > 0) wake();
  return found;
}

bool Agent::has_notice(int64_t request_id, int64_t layer) {
  std::lock_guard<std::mutex> lock(notice_mu_);
  return notice_arrived_locked(request_id, layer);
}

bool Agent::notice_arrived_locked(int64_t request_id, int64_t layer) const {
  auto it = arrived_set_.find(request_id);
  return it != arrived_set_.end() && it->second.count(layer) > 0;
}

std::vector<int64_t> Agent::notices(int64_t request_id) {
  std::lock_guard<std::mutex> lock(notice_mu_);
  auto it = arrived_.find(request_id);
  return it == arrived_.end() ? std::vector<int64_t>{} : it->second;
}

void Agent::clear_notices(int64_t request_id) {
  std::lock_guard<std::mutex> lock(notice_mu_);
  arrived_.erase(request_id);
  arrived_set_.erase(request_id);
}

}  // namespace dualkv
