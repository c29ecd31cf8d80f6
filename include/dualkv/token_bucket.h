// TokenBucket: a NIC's bandwidth cap shared by every process of one emulated node.
//
// The state is one cache line in a small mmap'd file (e.g. /dev/shm/dualkv-node0-snic): the
// rate, the burst, and a GCRA "theoretical arrival time" in CLOCK_MONOTONIC nanoseconds,
// updated with one compare-and-swap per acquire. Processes that open the same file share the
// cap exactly, as if they sat behind one NIC. Rate 0 means unlimited.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "dualkv/status.h"

namespace dualkv {

struct SharedBucketState;

class TokenBucket {
 public:
  // Opens (creating if needed) the shared state at `path` and sets its rate and burst; every
  // process of the node passes the same figures, the last one to open wins.
  static Status open(const std::string& path, double bytes_per_s, int64_t burst_bytes,
                     std::unique_ptr<TokenBucket>* out);
  ~TokenBucket();

  // Blocks until `bytes` may go, or returns TimedOut at once (taking nothing) when they could
  // not go before `deadline_ns` (CLOCK_MONOTONIC).
  Status acquire(int64_t bytes, int64_t deadline_ns);
  // Reserves `bytes` and returns the time at which they may go, without sleeping; a caller
  // that must stay responsive (the traffic manager) waits for that time itself.
  int64_t reserve(int64_t bytes);
  // Reserves `bytes` queued behind everything reserved before and returns when their last byte
  // has gone through the NIC (CLOCK_MONOTONIC ns), without sleeping: an emulated storage read
  // whose data is read for real at once but counts as arrived only then.
  int64_t reserve_until(int64_t bytes);
  // Charges bytes that went without waiting (model traffic shares the NIC with KV traffic).
  void debit(int64_t bytes);
  // Nanoseconds of traffic queued and not yet through the NIC (0 when idle or uncapped).
  int64_t backlog_ns() const;

  double bytes_per_s() const;
  int64_t burst_bytes() const;
  const std::string& path() const { return path_; }

 private:
  TokenBucket(std::string path, SharedBucketState* state) : path_(std::move(path)), state_(state) {}
  int64_t cost_ns(int64_t bytes, double rate) const;

  std::string path_;
  SharedBucketState* state_;
};

}  // namespace dualkv
