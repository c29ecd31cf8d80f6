// The io_uring I/O engine: one ring, submissions under a lock from any thread, one completion
// thread that reaps, resubmits short reads and hands finished requests to their owners. At
// most queue_depth reads are in the ring; the rest wait in a local queue.
#include <errno.h>
#include <liburing.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "dualkv/io_engine.h"

namespace dualkv {
namespace {

class UringEngine : public IoEngine {
 public:
  ~UringEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      is_stopping_ = true;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      while (sqe == nullptr) {  // the ring holds queue_depth + 1 entries: one submit frees one
        io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
      }
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);  // the wake-up: a completion without a request
      io_uring_submit(&ring_);
    }
    reaper_.join();
    if (has_buffers_) io_uring_unregister_buffers(&ring_);
    io_uring_queue_exit(&ring_);
  }

  static Status create(int queue_depth, std::unique_ptr<IoEngine>* out) {
    if (queue_depth <= 0 || queue_depth > 4096) {
      return make_status(Code::kInvalidArgument, "queue_depth must be in 1..4096");
    }
    std::unique_ptr<UringEngine> engine(new UringEngine(queue_depth));
    int rc = io_uring_queue_init(static_cast<unsigned>(queue_depth) + 1, &engine->ring_, 0);
    if (rc < 0) {
      return make_status(Code::kUnavailable,
                         std::string("io_uring_queue_init failed: ") + strerror(-rc), -rc);
    }
    engine->reaper_ = std::thread([e = engine.get()] { e->reap(); });
    *out = std::move(engine);
    return Status::Ok();
  }

  const char* name() const override { return "io_uring"; }
  bool has_registered_buffers() const override { return has_buffers_; }

  Status register_pool(const HostPool& pool) override {
    const auto& chunks = pool.chunks();
    std::lock_guard<std::mutex> lock(mu_);
    int rc = io_uring_register_buffers(&ring_, chunks.data(), static_cast<unsigned>(chunks.size()));
    if (rc == -ENOMEM || rc == -EPERM) {
      return make_status(Code::kOutOfMemory,
          "io_uring could not pin the host pool (" + std::to_string(pool.size_bytes()) +
          " bytes): RLIMIT_MEMLOCK is too small. Raise it with `ulimit -l unlimited`, systemd "
          "LimitMEMLOCK=infinity, docker --ulimit memlock=-1, or grant CAP_IPC_LOCK");
    }
    if (rc < 0) {
      return make_status(Code::kStorageError,
                         std::string("io_uring_register_buffers: ") + strerror(-rc), -rc);
    }
    has_buffers_ = true;
    return Status::Ok();
  }

  void submit(IoRequest* const* requests, size_t n) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < n; ++i) waiting_.push_back(requests[i]);
    fill_ring_locked();
  }

 private:
  explicit UringEngine(int queue_depth) : queue_depth_(queue_depth) {}

  // False when the submission queue has no free entry (entries the kernel has not taken yet).
  bool prep_locked(IoRequest* r) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return false;
    char* addr = r->addr + r->num_done_bytes;
    unsigned len = r->len - r->num_done_bytes;
    off_t offset = static_cast<off_t>(r->offset + r->num_done_bytes);
    if (r->buf_index >= 0 && has_buffers_) {
      io_uring_prep_read_fixed(sqe, r->fd, addr, len, offset, r->buf_index);
    } else {
      io_uring_prep_read(sqe, r->fd, addr, len, offset);
    }
    io_uring_sqe_set_data(sqe, r);
    ++num_in_ring_;
    return true;
  }

  void fill_ring_locked() {
    bool is_any = false;
    while (!waiting_.empty() && num_in_ring_ < queue_depth_ && prep_locked(waiting_.front())) {
      waiting_.pop_front();
      is_any = true;
    }
    if (is_any) io_uring_submit(&ring_);
  }

  void reap() {
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) continue;  // cannot happen with a live ring; never spin on a dead one below
      auto* r = static_cast<IoRequest*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (r == nullptr) {
        is_stop_seen_ = true;
      } else {
        finish_one(r, res);
      }
      if (is_stop_seen_) {
        std::lock_guard<std::mutex> lock(mu_);
        if (num_in_ring_ == 0 && waiting_.empty()) return;  // drained: every owner was told
      }
    }
  }

  void finish_one(IoRequest* r, int res) {
    int error = 0;
    bool is_done = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --num_in_ring_;
      if (res == -EAGAIN || res == -EINTR) {
        is_done = false;  // transient: resubmit the same range
      } else if (res < 0) {
        error = -res;
      } else if (res == 0 && r->num_done_bytes < r->len) {
        error = EIO;  // end of file before the whole range: a truncated block
      } else {
        r->num_done_bytes += static_cast<uint32_t>(res);
        is_done = r->num_done_bytes >= r->len;  // short read: ask for the rest
      }
      if (!is_done) waiting_.push_front(r);
      fill_ring_locked();
    }
    if (is_done) r->owner->on_io_done(r, error);
  }

  io_uring ring_{};
  int queue_depth_;
  int num_in_ring_ = 0;
  bool has_buffers_ = false;
  bool is_stopping_ = false;
  bool is_stop_seen_ = false;  // reaper thread only
  std::deque<IoRequest*> waiting_;
  std::mutex mu_;
  std::thread reaper_;
};

}  // namespace

Status make_uring_engine(int queue_depth, std::unique_ptr<IoEngine>* out) {
  return UringEngine::create(queue_depth, out);
}

}  // namespace dualkv
