// Shared-memory GCRA token bucket (see token_bucket.h). All fields are lock-free 64-bit
// atomics, which are address-free on x86-64 and so valid across processes in one mapping.
#include "dualkv/token_bucket.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dualkv/clock.h"

namespace dualkv {

constexpr uint64_t kBucketMagic = 0x444b5642554b3031ULL;  // "DKVBUK01"
constexpr size_t kMapBytes = 4096;

struct alignas(64) SharedBucketState {
  std::atomic<uint64_t> magic;
  std::atomic<int64_t> rate_milli_bps;  // bytes per second * 1000, so fractions survive
  std::atomic<int64_t> burst_bytes;
  std::atomic<int64_t> tat_ns;  // when the bucket would be back to full tokens
};
static_assert(std::atomic<int64_t>::is_always_lock_free, "needs lock-free 64-bit atomics");

Status TokenBucket::open(const std::string& path, double bytes_per_s, int64_t burst_bytes,
                         std::unique_ptr<TokenBucket>* out) {
  if (bytes_per_s < 0 || burst_bytes < 0)
    return make_status(Code::kInvalidArgument, "token bucket rate and burst must be >= 0");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_status(Code::kStorageError, "open " + path + ": " + strerror(errno), errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || (st.st_size < off_t(kMapBytes) && ftruncate(fd, kMapBytes) != 0)) {
    int err = errno;
    ::close(fd);
    return make_status(Code::kStorageError, "size " + path + ": " + strerror(err), err);
  }
  void* mem = mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (mem == MAP_FAILED)
    return make_status(Code::kStorageError, "mmap " + path + ": " + strerror(errno), errno);
  auto* state = static_cast<SharedBucketState*>(mem);  // zero-filled by ftruncate when new
  state->rate_milli_bps.store(int64_t(bytes_per_s * 1000.0));
  state->burst_bytes.store(burst_bytes);
  uint64_t expected = 0;
  if (state->magic.compare_exchange_strong(expected, kBucketMagic)) state->tat_ns.store(now_ns());
  else if (expected != kBucketMagic) {
    munmap(mem, kMapBytes);
    return make_status(Code::kInvalidArgument, path + " is not a dualkv token bucket");
  }
  out->reset(new TokenBucket(path, state));
  return Status::Ok();
}

TokenBucket::~TokenBucket() { munmap(state_, kMapBytes); }

double TokenBucket::bytes_per_s() const { return state_->rate_milli_bps.load() / 1000.0; }
int64_t TokenBucket::burst_bytes() const { return state_->burst_bytes.load(); }

int64_t TokenBucket::cost_ns(int64_t bytes, double rate) const {
  return int64_t(double(bytes) * 1e9 / rate);
}

int64_t TokenBucket::reserve(int64_t bytes) {
  double rate = bytes_per_s();
  int64_t now = now_ns();
  if (rate <= 0 || bytes <= 0) return now;
  int64_t cost = cost_ns(bytes, rate);
  int64_t tolerance = cost_ns(burst_bytes(), rate);
  int64_t tat = state_->tat_ns.load();
  while (true) {
    int64_t start = std::max(tat, now);
    if (state_->tat_ns.compare_exchange_weak(tat, start + cost))
      return std::max(now, tat - tolerance);  // go once the backlog fits in the burst
  }
}

Status TokenBucket::acquire(int64_t bytes, int64_t deadline_ns) {
  double rate = bytes_per_s();
  if (bytes < 0) return make_status(Code::kInvalidArgument, "acquire of a negative byte count");
  if (rate <= 0 || bytes == 0) return Status::Ok();
  int64_t cost = cost_ns(bytes, rate);
  int64_t tolerance = cost_ns(burst_bytes(), rate);
  int64_t tat = state_->tat_ns.load();
  int64_t go;
  while (true) {
    int64_t now = now_ns();
    go = std::max(now, tat - tolerance);
    if (go > deadline_ns)
      return make_status(Code::kTimedOut, "token bucket " + path_ + " cannot grant " +
                                              std::to_string(bytes) + " bytes before the deadline");
    if (state_->tat_ns.compare_exchange_weak(tat, std::max(tat, now) + cost)) break;
  }
  if (go > now_ns()) sleep_until_ns(go);
  return Status::Ok();
}

int64_t TokenBucket::reserve_until(int64_t bytes) {
  double rate = bytes_per_s();
  int64_t now = now_ns();
  if (rate <= 0 || bytes <= 0) return now;
  int64_t cost = cost_ns(bytes, rate);
  int64_t tat = state_->tat_ns.load();
  while (!state_->tat_ns.compare_exchange_weak(tat, std::max(tat, now) + cost)) {
  }
  return std::max(tat, now) + cost;
}

int64_t TokenBucket::backlog_ns() const {
  if (bytes_per_s() <= 0) return 0;
  return std::max<int64_t>(0, state_->tat_ns.load() - now_ns());
}

void TokenBucket::debit(int64_t bytes) {
  double rate = bytes_per_s();
  if (rate <= 0 || bytes <= 0) return;
  int64_t cost = cost_ns(bytes, rate);
  int64_t now = now_ns();
  int64_t tat = state_->tat_ns.load();
  while (!state_->tat_ns.compare_exchange_weak(tat, std::max(tat, now) + cost)) {
  }
}

}  // namespace dualkv
