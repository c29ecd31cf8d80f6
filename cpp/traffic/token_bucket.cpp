// Shared-memory GCRA token bucket (see token_bucket.h). All fields are lock-free 64-bit
// atomics, which are address-free on x86-64 and so valid across processes in one mapping.
#include "dualkv/token_bucket.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "dualkv/clock.h"
#include "dualkv/mapped_file_guard.h"

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
                         int64_t max_backlog_ns, std::unique_ptr<TokenBucket>* out) {
  if (!std::isfinite(bytes_per_s) || bytes_per_s < 0 || bytes_per_s > kMaxBytesPerS)
    return make_status(Code::kInvalidArgument,
                       "token bucket rate must be finite, >= 0 and <= 1e15 bytes/s");
  if (burst_bytes < 0 || burst_bytes > kMaxBurstBytes)
    return make_status(Code::kInvalidArgument, "token bucket burst must be in [0, 2^40] bytes");
  if (max_backlog_ns <= 0)
    return make_status(Code::kInvalidArgument, "token bucket max backlog must be > 0");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_status(Code::kStorageError, "open " + path + ": " + strerror(errno), errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (st.st_size < off_t(kMapBytes) && ftruncate(fd, kMapBytes) != 0)) {
    int err = S_ISREG(st.st_mode) ? errno : EINVAL;
    ::close(fd);
    return make_status(Code::kStorageError, "size " + path + ": " + strerror(err), err);
  }
  void* mem = mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    return make_status(Code::kStorageError, "mmap " + path + ": " + strerror(err), err);
  }
  if (!guard_mapping(mem, kMapBytes, fd)) {
    munmap(mem, kMapBytes);
    ::close(fd);
    return make_status(Code::kOutOfMemory, "too many token buckets open in this process");
  }
  auto* state = static_cast<SharedBucketState*>(mem);  // zero-filled by ftruncate when new
  uint64_t magic = state->magic.load();
  if (magic != 0 && magic != kBucketMagic) {
    unguard_mapping(mem);
    munmap(mem, kMapBytes);
    ::close(fd);
    return make_status(Code::kInvalidArgument, path + " is not a dualkv token bucket");
  }
  out->reset(new TokenBucket(path, state, fd, bytes_per_s, burst_bytes, max_backlog_ns));
  (*out)->reset_state();  // the last one to open sets the figures
  return Status::Ok();
}

TokenBucket::~TokenBucket() {
  unguard_mapping(state_);
  munmap(state_, kMapBytes);
  ::close(fd_);
}

// Writes this process's figures; a fresh or damaged state also restarts its clock.
void TokenBucket::reset_state() const {
  state_->rate_milli_bps.store(int64_t(rate_ * 1000.0));
  state_->burst_bytes.store(burst_);
  uint64_t magic = state_->magic.load();
  if (magic != kBucketMagic) {
    state_->tat_ns.store(now_ns());
    state_->magic.compare_exchange_strong(magic, kBucketMagic);
  }
}

double TokenBucket::checked_rate() const {
  int64_t milli = state_->rate_milli_bps.load();
  int64_t burst = state_->burst_bytes.load();
  if (state_->magic.load() != kBucketMagic || milli < 0 || milli > int64_t(kMaxBytesPerS) * 1000 ||
      burst < 0 || burst > kMaxBurstBytes) {
    num_repairs_.fetch_add(1);
    if (state_->magic.load() != kBucketMagic) state_->magic.store(0);  // restart the clock too
    reset_state();
    milli = state_->rate_milli_bps.load();
  }
  return milli / 1000.0;
}

int64_t TokenBucket::load_tat(int64_t now) const {
  int64_t tat = state_->tat_ns.load();
  if (tat > now + max_backlog_ns_) {  // no call queues that much: the state is damaged
    num_repairs_.fetch_add(1);
    state_->tat_ns.compare_exchange_strong(tat, now);
    return state_->tat_ns.load();
  }
  return tat;
}

double TokenBucket::bytes_per_s() const { return checked_rate(); }
int64_t TokenBucket::burst_bytes() const {
  checked_rate();
  return state_->burst_bytes.load();
}

int64_t TokenBucket::cost_ns(int64_t bytes, double rate) const {
  return int64_t(std::min(double(bytes) * 1e9 / rate, 9e18));
}

int64_t TokenBucket::reserve(int64_t bytes) {
  double rate = checked_rate();
  int64_t now = now_ns();
  if (rate <= 0 || bytes <= 0) return now;
  int64_t cost = std::min(cost_ns(bytes, rate), max_backlog_ns_);
  int64_t tolerance = cost_ns(burst_bytes(), rate);
  int64_t tat = load_tat(now);
  while (true) {
    int64_t start = std::max(tat, now);
    int64_t end = std::min(start + cost, now + max_backlog_ns_);
    if (state_->tat_ns.compare_exchange_weak(tat, end))
      return std::max(now, tat - tolerance);  // go once the backlog fits in the burst
  }
}

Status TokenBucket::acquire(int64_t bytes, int64_t deadline_ns) {
  double rate = checked_rate();
  if (bytes < 0) return make_status(Code::kInvalidArgument, "acquire of a negative byte count");
  if (rate <= 0 || bytes == 0) return Status::Ok();
  int64_t cost = cost_ns(bytes, rate);
  if (cost > max_backlog_ns_)
    return make_status(Code::kInvalidArgument, "acquire of " + std::to_string(bytes) +
                                                   " bytes exceeds the bucket's max backlog");
  int64_t tolerance = cost_ns(burst_bytes(), rate);
  int64_t tat = load_tat(now_ns());
  int64_t go;
  while (true) {
    int64_t now = now_ns();
    go = std::max(now, tat - tolerance);
    if (go > deadline_ns)
      return make_status(Code::kTimedOut, "token bucket " + path_ + " cannot grant " +
                                              std::to_string(bytes) + " bytes before the deadline");
    int64_t end = std::min(std::max(tat, now) + cost, now + max_backlog_ns_);
    if (state_->tat_ns.compare_exchange_weak(tat, end)) break;
  }
  if (go > now_ns()) sleep_until_ns(go);
  return Status::Ok();
}

int64_t TokenBucket::reserve_until(int64_t bytes) {
  double rate = checked_rate();
  int64_t now = now_ns();
  if (rate <= 0 || bytes <= 0) return now;
  int64_t cost = std::min(cost_ns(bytes, rate), max_backlog_ns_);
  int64_t tat = load_tat(now);
  int64_t end;
  do {
    end = std::min(std::max(tat, now) + cost, now + max_backlog_ns_);
  } while (!state_->tat_ns.compare_exchange_weak(tat, end));
  return end;
}

int64_t TokenBucket::backlog_ns() const {
  if (checked_rate() <= 0) return 0;
  int64_t now = now_ns();
  return std::max<int64_t>(0, load_tat(now) - now);
}

Status TokenBucket::debit(int64_t bytes) {
  double rate = checked_rate();
  if (bytes < 0) return make_status(Code::kInvalidArgument, "debit of a negative byte count");
  if (rate <= 0 || bytes == 0) return Status::Ok();
  int64_t cost = cost_ns(bytes, rate);
  if (cost > max_backlog_ns_)  // one call must not stall the node's NIC for everyone
    return make_status(Code::kInvalidArgument, "debit of " + std::to_string(bytes) +
                                                   " bytes exceeds the bucket's max backlog");
  int64_t now = now_ns();
  int64_t tat = load_tat(now);
  while (!state_->tat_ns.compare_exchange_weak(
      tat, std::min(std::max(tat, now) + cost, now + max_backlog_ns_))) {
  }
  return Status::Ok();
}

}  // namespace dualkv
