// A per-layer transfer validated once and posted many times: what an engine streams once per
// layer (put a layer's descriptor batch, notice (request, layer) at the receiver). prepare()
// checks every layer's descriptors against the registered regions up front; post(layer) then
// only resolves the regions (re-validating if the agent's regions changed since) and posts,
// with no handle: completions are counted here and wait() reports the first failure.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "dualkv/transfer.h"

namespace dualkv {

struct PreparedSpec {
  uint64_t peer = 0;
  uint64_t local_region = 0;
  uint64_t remote_region = 0;
  bool is_get = false;
  std::vector<RmaDesc> descs;  // layer 0's descriptors
  int64_t request_id = 0;
  int64_t num_layers = 1;
  // Layer l moves descs shifted by l * stride on each side ([layer][...] layouts).
  int64_t local_layer_stride = 0;
  int64_t remote_layer_stride = 0;
  int64_t block_bytes = 0;
};

class PreparedTransfer {
 public:
  static Status create(std::shared_ptr<Agent> agent, const PreparedSpec& spec,
                       std::unique_ptr<PreparedTransfer>* out);

  // Posts layer `layer` (0 <= layer < num_layers) with notice (request_id, layer). Without
  // `may_block` it returns kInProgress, posting nothing, when another thread holds the worker.
  Status post(int64_t layer, bool may_block);
  // Every batch posted so far finished; the first failure of any of them (sticky).
  Status wait(int64_t deadline_ns);
  int64_t num_pending();
  int64_t layer_bytes() const { return layer_bytes_; }
  const PreparedSpec& spec() const { return spec_; }

 private:
  // Completions of posted batches: a counter on the hot path, the mutex only for a failure
  // or to wake a waiter once nothing is pending.
  struct Tracker {
    std::atomic<int64_t> pending{0};
    std::mutex mu;
    std::condition_variable cv;
    Status failure;
    void finish(const Status& st);
  };

  PreparedTransfer(std::shared_ptr<Agent> agent, PreparedSpec spec);

  std::shared_ptr<Agent> agent_;
  PreparedSpec spec_;
  std::vector<RmaBatch> layers_;
  int64_t layer_bytes_ = 0;
  // Regions generation layers_ was validated against; read and advanced by the agent under
  // its worker lock only, so concurrent posts need no lock of their own.
  uint64_t checked_gen_ = 0;
  std::shared_ptr<Tracker> tracker_ = std::make_shared<Tracker>();
};

}  // namespace dualkv
