// TrafficManager: the one door of a node's bulk moves. `model` work is posted at once from
// the caller's thread; `kv` work is cut into chunks that a dispatcher thread posts one window
// at a time, only while no model work is in flight, each chunk paid for in the node's CNIC
// token bucket. A model message therefore waits behind at most `kv_window` chunks. So that
// saturating model traffic cannot starve kv, every model byte earns kv a credit of
// kv_min_share / (1 - kv_min_share) bytes while kv has work queued (capped at 64 windows of
// chunks); a chunk whose bytes are covered is posted even while model work is in flight.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "dualkv/completion.h"
#include "dualkv/rma.h"
#include "dualkv/token_bucket.h"

namespace dualkv {

enum class TrafficClass : int { kModel = 0, kKv = 1 };

struct TrafficConfig {
  int64_t chunk_bytes = 512 * 1024;
  int kv_window = 1;  // kv chunks in flight at once
  double kv_min_share = 0.1;  // kv's floor of the bytes while model traffic saturates
};

// A host memory copy (host<->host, or host<->device where the device memory is host-mapped).
struct CopyDesc {
  int64_t dst_ptr;
  int64_t src_ptr;
  int64_t length;
};

// The copies, at once on the caller's thread (no traffic class, no pacing): for staging
// copies that only need to leave the GIL, e.g. beside a model's forward. InvalidArgument
// for a null address or a length <= 0, before anything is copied.
Status copy_ranges(const std::vector<CopyDesc>& copies);

struct TrafficStats {
  int64_t model_bytes = 0, kv_bytes = 0, kv_chunks = 0, model_jobs = 0, kv_jobs = 0;
  int64_t kv_chunks_beside_model = 0;  // posted on credit while model work was in flight
};

class TrafficManager {
 public:
  TrafficManager(TrafficConfig config, std::shared_ptr<TokenBucket> cnic);
  ~TrafficManager();
  void close();

  Status submit_rma(BatchPoster* poster, RmaBatch batch, int64_t block_bytes, TrafficClass cls,
                    uint64_t* handle);
  Status submit_copy(std::vector<CopyDesc> copies, TrafficClass cls, uint64_t* handle);
  HandleTable& handles() { return handles_; }
  TrafficStats stats();
  const TrafficConfig& config() const { return config_; }

 private:
  struct Job;
  void dispatch_loop();
  bool cut_chunk(Job* job, Job* chunk);
  void post_chunk(const std::shared_ptr<Job>& job, Job chunk, bool is_failed);
  void chunk_done(const std::shared_ptr<Job>& job, const Status& status);
  void model_done();
  Status queue_kv(const std::shared_ptr<Job>& job);
  void earn_kv_credit(int64_t model_bytes);

  TrafficConfig config_;
  std::shared_ptr<TokenBucket> cnic_;
  HandleTable handles_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> kv_jobs_;
  int kv_inflight_ = 0;
  int64_t kv_credit_ = 0;     // bytes kv may post beside model work (kv_min_share)
  int64_t pending_bytes_ = -1;  // the cut chunk waiting to be posted, -1 if none
  std::atomic<int> model_inflight_{0};
  bool stop_ = false;
  TrafficStats stats_;
  std::thread thread_;
};

}  // namespace dualkv
