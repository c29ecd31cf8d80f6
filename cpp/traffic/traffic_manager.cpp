// TrafficManager (see traffic.h): model work goes straight to its transport; kv work is cut
// into chunks posted by one dispatcher thread under the CNIC token bucket, and held back
// while any model work is in flight.
#include "dualkv/traffic.h"

#include <algorithm>
#include <cstring>

namespace dualkv {

struct TrafficManager::Job {
  BatchPoster* poster = nullptr;  // null: a memory copy
  RmaBatch rma;                   // descs = what is left to post (or the chunk)
  std::vector<CopyDesc> copies;
  size_t next = 0;           // first descriptor not fully posted
  int64_t next_offset = 0;   // bytes of it already posted
  int inflight = 0;
  bool is_cut = false;       // every byte has been posted (or the job failed)
  Status status;
  std::shared_ptr<Completion> completion;

  size_t num_descs() const { return poster ? rma.descs.size() : copies.size(); }
  int64_t length(size_t i) const { return poster ? rma.descs[i].length : copies[i].length; }
};

TrafficManager::TrafficManager(TrafficConfig config, std::shared_ptr<TokenBucket> cnic)
    : config_(config), cnic_(std::move(cnic)) {
  config_.chunk_bytes = std::max<int64_t>(config_.chunk_bytes, 4096);
  config_.kv_window = std::max(config_.kv_window, 1);
  config_.kv_min_share = std::clamp(config_.kv_min_share, 0.0, 0.9);
  thread_ = std::thread([this] { dispatch_loop(); });
}

TrafficManager::~TrafficManager() { close(); }

void TrafficManager::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  // Posted chunks and model batches call back into this object: wait for them (bounded by
  // the transports' own deadlines) so that nothing runs against a destroyed manager.
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::seconds(60),
               [this] { return kv_inflight_ == 0 && model_inflight_.load() == 0; });
  for (auto& job : kv_jobs_)
    job->completion->finish(make_status(Code::kUnavailable, "traffic manager closed"));
}

static Status copy_now(const std::vector<CopyDesc>& copies) {
  for (const CopyDesc& c : copies)
    std::memcpy(reinterpret_cast<void*>(c.dst_ptr), reinterpret_cast<const void*>(c.src_ptr),
                size_t(c.length));
  return Status::Ok();
}

static Status check_copies(const std::vector<CopyDesc>& copies) {
  for (size_t i = 0; i < copies.size(); ++i) {
    const CopyDesc& c = copies[i];
    if (c.dst_ptr == 0 || c.src_ptr == 0 || c.length <= 0)
      return make_status(Code::kInvalidArgument,
                         "copy descriptor " + std::to_string(i) + ": null address or length <= 0");
  }
  return Status::Ok();
}

Status copy_ranges(const std::vector<CopyDesc>& copies) {
  Status st = check_copies(copies);
  return st.ok() ? copy_now(copies) : st;
}

Status TrafficManager::submit_copy(std::vector<CopyDesc> copies, TrafficClass cls,
                                   uint64_t* handle) {
  Status st = check_copies(copies);
  if (!st.ok()) return st;
  auto job = std::make_shared<Job>();
  job->completion = std::make_shared<Completion>();
  int64_t bytes = 0;
  for (const CopyDesc& c : copies) bytes += c.length;
  if (cls == TrafficClass::kModel) {  // latency-critical: now, on the caller's thread
    // A model copy larger than the bucket's max backlog goes uncharged rather than stalling.
    if (cnic_) (void)cnic_->debit(bytes);
    job->completion->finish(copy_now(copies));
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.model_bytes += bytes;
      stats_.model_jobs++;
    }
    cv_.notify_all();
  } else {
    job->copies = std::move(copies);
    st = queue_kv(job);
    if (!st.ok()) return st;
  }
  *handle = handles_.add(job->completion);
  return Status::Ok();
}

// The kv class waits for the dispatcher, which paces it against model traffic.
Status TrafficManager::queue_kv(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return make_status(Code::kUnavailable, "traffic manager closed");
    kv_jobs_.push_back(job);
    stats_.kv_jobs++;
  }
  cv_.notify_all();
  return Status::Ok();
}

Status TrafficManager::submit_rma(BatchPoster* poster, RmaBatch batch, int64_t block_bytes,
                                  TrafficClass cls, uint64_t* handle) {
  Status st = poster->validate(batch, block_bytes);  // nothing is posted past a bad descriptor
  if (!st.ok()) return st;
  auto completion = std::make_shared<Completion>();
  int64_t bytes = batch.num_bytes();
  if (cls == TrafficClass::kModel) {
    if (cnic_) (void)cnic_->debit(bytes);  // uncharged past the max backlog (see above)
    model_inflight_.fetch_add(1);
    st = poster->post(std::move(batch), [this, completion](const Status& s) {
      completion->finish(s);
      model_done();
    });
    if (!st.ok()) {
      model_done();
      return st;
    }
    earn_kv_credit(bytes);
  } else {
    auto job = std::make_shared<Job>();
    job->poster = poster;
    job->rma = std::move(batch);
    job->completion = completion;
    job->is_cut = job->rma.descs.empty() && !job->rma.has_notice;
    st = queue_kv(job);
    if (!st.ok()) return st;
  }
  *handle = handles_.add(completion);
  return Status::Ok();
}

constexpr int64_t kCreditChunks = 64;

// Under saturating model traffic kv would never see model_inflight_ == 0: model bytes earn it
// the right to post beside them, so kv keeps at least kv_min_share of the bytes.
void TrafficManager::earn_kv_credit(int64_t model_bytes) {
  bool is_ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.model_bytes += model_bytes;
    stats_.model_jobs++;
    if (kv_jobs_.empty()) return;  // an idle kv class saves up nothing
    // The cap bounds the catch-up after the dispatcher was slow to react; chunks in flight
    // stay bounded by kv_window whatever the credit.
    double share = config_.kv_min_share;
    int64_t cap = kCreditChunks * config_.chunk_bytes * config_.kv_window;
    bool was_short = pending_bytes_ < 0 || kv_credit_ < pending_bytes_;
    kv_credit_ = std::min<int64_t>(cap, kv_credit_ + int64_t(model_bytes * share / (1 - share)));
    is_ready = was_short && pending_bytes_ >= 0 && kv_credit_ >= pending_bytes_;
  }
  if (is_ready) cv_.notify_all();  // only at the crossing: no wake-up per model message
}

void TrafficManager::model_done() {
  if (model_inflight_.fetch_sub(1) == 1) {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }
}

// Moves up to chunk_bytes of `job`'s remaining descriptors into `chunk`; the last chunk of an
// RMA job carries its notice (the agent sends it after every earlier chunk's bytes landed).
bool TrafficManager::cut_chunk(Job* job, Job* chunk) {
  int64_t budget = config_.chunk_bytes;
  chunk->poster = job->poster;
  chunk->rma = job->rma;
  chunk->rma.descs.clear();
  chunk->rma.has_notice = false;
  while (job->next < job->num_descs() && budget > 0) {
    int64_t take = std::min(budget, job->length(job->next) - job->next_offset);
    int64_t off = job->next_offset;
    if (job->poster) {
      const RmaDesc& d = job->rma.descs[job->next];
      chunk->rma.descs.push_back({d.local_offset + off, d.remote_offset + off, take});
    } else {
      const CopyDesc& c = job->copies[job->next];
      chunk->copies.push_back({c.dst_ptr + off, c.src_ptr + off, take});
    }
    budget -= take;
    job->next_offset += take;
    if (job->next_offset == job->length(job->next)) {
      job->next++;
      job->next_offset = 0;
    }
  }
  job->is_cut = job->next >= job->num_descs();
  if (job->is_cut && job->poster) chunk->rma.has_notice = job->rma.has_notice;
  return true;
}

void TrafficManager::dispatch_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  std::shared_ptr<Job> pending_job;
  Job pending;
  int64_t pending_bytes = 0, ready_ns = 0;
  while (!stop_) {
    if (!pending_job) {  // cut the next chunk and reserve its bytes in the CNIC bucket
      for (auto& job : kv_jobs_) {
        if (job->is_cut) continue;
        pending = Job();
        cut_chunk(job.get(), &pending);
        pending_job = job;
        pending_bytes = pending.poster ? pending.rma.num_bytes() : 0;
        for (auto& c : pending.copies) pending_bytes += c.length;
        pending_bytes_ = pending_bytes;
        ready_ns = cnic_ ? cnic_->reserve(pending_bytes) : 0;
        job->inflight++;  // counted from the cut, so the job cannot finish before it posts
        break;
      }
    }
    bool is_model_busy = model_inflight_.load() > 0;
    bool may_go = pending_job && kv_inflight_ < config_.kv_window &&
                  (!is_model_busy || kv_credit_ >= pending_bytes);
    if (may_go && now_ns() >= ready_ns) {
      auto job = std::move(pending_job);
      pending_job.reset();
      pending_bytes_ = -1;
      if (is_model_busy) {
        kv_credit_ -= pending_bytes;
        stats_.kv_chunks_beside_model++;
      }
      kv_inflight_++;
      stats_.kv_bytes += pending_bytes;
      stats_.kv_chunks++;
      bool is_failed = !job->status.ok();
      lock.unlock();
      post_chunk(job, std::move(pending), is_failed);
      lock.lock();
      continue;
    }
    if (may_go)
      cv_.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(ready_ns - now_ns(), 0)));
    else
      cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  if (pending_job) pending_job->inflight--;
}

void TrafficManager::post_chunk(const std::shared_ptr<Job>& job, Job chunk, bool is_failed) {
  if (is_failed) {  // an earlier chunk failed: post nothing more of this job
    chunk_done(job, Status::Ok());
    return;
  }
  if (chunk.poster == nullptr) {
    chunk_done(job, copy_now(chunk.copies));
    return;
  }
  Status st = chunk.poster->post(std::move(chunk.rma),
                                 [this, job](const Status& s) { chunk_done(job, s); });
  if (!st.ok()) chunk_done(job, st);
}

void TrafficManager::chunk_done(const std::shared_ptr<Job>& job, const Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    kv_inflight_--;
    job->inflight--;
    if (!status.ok() && job->status.ok()) {
      job->status = status;
      job->is_cut = true;
    }
    if (job->is_cut && job->inflight == 0) {
      job->completion->finish(job->status);
      kv_jobs_.erase(std::find(kv_jobs_.begin(), kv_jobs_.end(), job));
      if (kv_jobs_.empty()) kv_credit_ = 0;  // credit is for queued work, not saved up
    }
  }
  cv_.notify_all();
}

TrafficStats TrafficManager::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace dualkv
