// PreparedTransfer: per-layer batches validated once (see transfer_prepared.h).
#include "dualkv/transfer_prepared.h"

#include <chrono>
#include <string>

#include "transfer_internal.h"

namespace dualkv {

// The agent's side of a prepared post: the batch was validated at prepare; it is checked
// again only when the regions generation moved (a deregister, revocation or re-import).
Status Agent::post_prepared(const RmaBatch& rma, int64_t block_bytes, uint64_t* checked_gen,
                            DoneCallback done, bool may_block) {
  if (closed_) return make_status(Code::kUnavailable, "agent is closed");
  // worker_mu_ before state_mu_, the order fail_peer and the progress thread take them in.
  std::unique_lock<std::recursive_mutex> worker(worker_mu_, std::defer_lock);
  if (may_block) {
    worker.lock();
  } else if (!worker.try_lock()) {
    return make_status(Code::kInProgress, "worker busy");
  }
  if (worker_ == nullptr) return make_status(Code::kUnavailable, "agent is closed");
  auto batch = std::make_shared<Batch>();
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    uint64_t gen = regions_gen_.load(std::memory_order_acquire);
    if (gen != *checked_gen) {  // a region went or was re-imported: check the bounds again
      Status st = validate_locked(rma, block_bytes);
      if (!st.ok()) return st;
      *checked_gen = gen;
    }
    Status st = resolve_locked(rma, batch.get());
    if (!st.ok()) return st;
  }
  batch->agent = this;
  batch->rma = rma;
  batch->done = std::move(done);
  batch->deadline_ns = deadline_after(config_.op_timeout_s);
  start_batch(batch);
  bool is_pending = !batch->is_finished;
  worker.unlock();
  if (is_pending) wake();
  return Status::Ok();
}

PreparedTransfer::PreparedTransfer(std::shared_ptr<Agent> agent, PreparedSpec spec)
    : agent_(std::move(agent)), spec_(std::move(spec)) {}

Status PreparedTransfer::create(std::shared_ptr<Agent> agent, const PreparedSpec& spec,
                                std::unique_ptr<PreparedTransfer>* out) {
  if (agent == nullptr) return make_status(Code::kInvalidArgument, "no agent");
  if (spec.num_layers < 1) return make_status(Code::kInvalidArgument, "num_layers must be >= 1");
  if (spec.descs.empty())
    return make_status(Code::kInvalidArgument, "a prepared transfer needs descriptors");
  std::unique_ptr<PreparedTransfer> p(new PreparedTransfer(agent, spec));
  // Read before validating: a region change racing with prepare re-validates at post.
  p->checked_gen_ = agent->regions_gen();
  p->layers_.reserve(size_t(spec.num_layers));
  for (int64_t l = 0; l < spec.num_layers; ++l) {
    RmaBatch b;
    b.peer = spec.peer;
    b.local_region = spec.local_region;
    b.remote_region = spec.remote_region;
    b.is_get = spec.is_get;
    b.has_notice = true;
    b.request_id = spec.request_id;
    b.layer = l;
    b.descs.reserve(spec.descs.size());
    for (const RmaDesc& d : spec.descs)
      b.descs.push_back({d.local_offset + l * spec.local_layer_stride,
                         d.remote_offset + l * spec.remote_layer_stride, d.length});
    Status st = agent->validate(b, spec.block_bytes);
    if (!st.ok()) {
      if (spec.num_layers > 1) st.message = "layer " + std::to_string(l) + ": " + st.message;
      return st;
    }
    p->layers_.push_back(std::move(b));
  }
  p->layer_bytes_ = p->layers_[0].num_bytes();
  *out = std::move(p);
  return Status::Ok();
}

void PreparedTransfer::Tracker::finish(const Status& st) {
  if (!st.ok()) {
    std::lock_guard<std::mutex> lock(mu);
    if (failure.ok()) failure = st;
  }
  if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1 || !st.ok()) {
    { std::lock_guard<std::mutex> lock(mu); }  // a waiter between its check and its sleep
    cv.notify_all();
  }
}

Status PreparedTransfer::post(int64_t layer, bool may_block) {
  if (layer < 0 || layer >= spec_.num_layers)
    return make_status(Code::kInvalidArgument, "layer " + std::to_string(layer) +
                                                    " outside [0, " +
                                                    std::to_string(spec_.num_layers) + ")");
  tracker_->pending.fetch_add(1, std::memory_order_relaxed);
  Tracker* tracker = tracker_.get();
  Status st = agent_->post_prepared(layers_[size_t(layer)], spec_.block_bytes, &checked_gen_,
                                    [keep = tracker_](const Status& s) { keep->finish(s); },
                                    may_block);
  if (!st.ok()) {
    tracker->pending.fetch_sub(1);  // nothing was posted: no callback will run
    if (st.code == Code::kPeerDisconnected || st.code == Code::kTimedOut) {
      // the peer failed (before any batch in flight saw it, e.g. its process exited):
      // wait() reports it too, as for a failure that reached a posted batch
      std::lock_guard<std::mutex> lock(tracker->mu);
      if (tracker->failure.ok()) tracker->failure = st;
    }
  }
  return st;
}

Status PreparedTransfer::wait(int64_t deadline_ns) {
  std::unique_lock<std::mutex> lock(tracker_->mu);
  while (tracker_->pending.load(std::memory_order_acquire) > 0) {
    int64_t left = deadline_ns - now_ns();
    if (left <= 0)
      return make_status(Code::kTimedOut, std::to_string(tracker_->pending.load()) +
                                              " prepared batches still in flight at the deadline");
    tracker_->cv.wait_for(lock, std::chrono::nanoseconds(std::min<int64_t>(left, 20000000)));
  }
  return tracker_->failure;
}

int64_t PreparedTransfer::num_pending() { return tracker_->pending.load(); }

}  // namespace dualkv
