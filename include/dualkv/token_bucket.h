// TokenBucket: a NIC's bandwidth cap shared by every process of one emulated node.
//
// The state is one cache line in a small mmap'd file (e.g. /dev/shm/dualkv-node0-snic): the
// rate, the burst, and a GCRA "theoretical arrival time" in CLOCK_MONOTONIC nanoseconds,
// updated with one compare-and-swap per acquire. Processes that open the same file share the
// cap exactly, as if they sat behind one NIC. Rate 0 means unlimited.
//
// The file is shared with every process of the node, so its contents are input, not truth:
// a state with a wrong magic, a rate or burst outside the limits, or a queue longer than
// `max_backlog_ns` is re-initialised from this process's own figures, and a truncated file
// is grown back (mapped_file_guard.h) instead of killing the process with SIGBUS. One call
// never queues more than max_backlog_ns of traffic, so a huge debit cannot stall the node.
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
  // `max_backlog_ns` bounds the queue: a call that would queue more is refused
  // (InvalidArgument), a shared state that says more is damaged and reset.
  static Status open(const std::string& path, double bytes_per_s, int64_t burst_bytes,
                     int64_t max_backlog_ns, std::unique_ptr<TokenBucket>* out);
  static constexpr double kMaxBytesPerS = 1e15;  // 1 PB/s: far beyond any NIC, fits int64 ns
  static constexpr int64_t kMaxBurstBytes = int64_t(1) << 40;
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
  // InvalidArgument when they alone would queue more than max_backlog_ns.
  Status debit(int64_t bytes);
  // Nanoseconds of traffic queued and not yet through the NIC (0 when idle or uncapped).
  int64_t backlog_ns() const;

  double bytes_per_s() const;
  int64_t burst_bytes() const;
  int64_t max_backlog_ns() const { return max_backlog_ns_; }
  const std::string& path() const { return path_; }
  // Times the shared state was found damaged and re-initialised by this process.
  int64_t num_repairs() const { return num_repairs_.load(); }

 private:
  TokenBucket(std::string path, SharedBucketState* state, int fd, double rate, int64_t burst,
              int64_t max_backlog_ns)
      : path_(std::move(path)), state_(state), fd_(fd), rate_(rate), burst_(burst),
        max_backlog_ns_(max_backlog_ns) {}
  int64_t cost_ns(int64_t bytes, double rate) const;
  // The shared rate once the state is checked (and repaired if damaged).
  double checked_rate() const;
  void reset_state() const;
  // tat as read, with a damaged (too far ahead) value reset to `now`.
  int64_t load_tat(int64_t now) const;

  std::string path_;
  SharedBucketState* state_;
  int fd_;  // kept open for the SIGBUS guard, which grows the file back through it
  double rate_;
  int64_t burst_;
  int64_t max_backlog_ns_;
  mutable std::atomic<int64_t> num_repairs_{0};
};

}  // namespace dualkv
