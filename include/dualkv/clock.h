// Monotonic time and deadlines. CLOCK_MONOTONIC is one clock for every process on the machine,
// which the shared-memory token buckets rely on.
#pragma once

#include <time.h>

#include <cstdint>
#include <limits>

namespace dualkv {

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

// Seconds from now as an absolute monotonic deadline; a negative timeout means "no deadline"
// only where a caller explicitly allows it (Python always passes one).
inline int64_t deadline_after(double seconds) {
  if (seconds < 0) return kNoDeadline;
  if (seconds > 1e9) return kNoDeadline;
  return now_ns() + int64_t(seconds * 1e9);
}

// Sleeps until an absolute monotonic time (shared by every process, see above).
inline void sleep_until_ns(int64_t when_ns) {
  timespec ts{time_t(when_ns / 1000000000LL), long(when_ns % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0) {
  }
}

}  // namespace dualkv
