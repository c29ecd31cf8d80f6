// One-sided move descriptors and the interface through which the traffic manager posts them.
// Offsets are relative to registered regions, so every descriptor can be bounds-checked
// before anything reaches the transport.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "dualkv/status.h"

namespace dualkv {

struct RmaDesc {
  int64_t local_offset;
  int64_t remote_offset;
  int64_t length;
};

// A batch of puts or gets between one local and one remote region of one peer. When
// `has_notice`, the receiving side records (request_id, layer) once every byte has landed:
// the remote side for a put, this side for a get.
struct RmaBatch {
  uint64_t peer = 0;
  uint64_t local_region = 0;
  uint64_t remote_region = 0;
  bool is_get = false;
  std::vector<RmaDesc> descs;
  bool has_notice = false;
  int64_t request_id = 0;
  int64_t layer = 0;

  int64_t num_bytes() const {
    int64_t total = 0;
    for (const auto& d : descs) total += d.length;
    return total;
  }
};

using DoneCallback = std::function<void(const Status&)>;

// Implemented by the UCX agent. validate() answers synchronously; post() calls `done` exactly
// once when the batch (and its notice) completed or failed: often inside post() itself, on the
// caller's thread (over shared memory a batch completes inline), else later from the thread
// that progresses the transport. A caller must not hold a lock that `done` takes.
class BatchPoster {
 public:
  virtual ~BatchPoster() = default;
  virtual Status validate(const RmaBatch& batch, int64_t block_bytes) = 0;
  virtual Status post(RmaBatch batch, DoneCallback done) = 0;
};

}  // namespace dualkv
