// The posix I/O engine: pread on a few threads. It is the fallback where io_uring is missing
// or refused, and the baseline the io_uring engine is compared with.
#include <errno.h>
#include <unistd.h>

#include "dualkv/io_engine.h"
#include "dualkv/thread_pool.h"

namespace dualkv {

int pread_fully(IoRequest* r) {
  while (r->num_done_bytes < r->len) {
    ssize_t n = pread(r->fd, r->addr + r->num_done_bytes, r->len - r->num_done_bytes,
                      static_cast<off_t>(r->offset + r->num_done_bytes));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return errno;
    }
    if (n == 0) return EIO;  // the file is shorter than a block: truncated
    r->num_done_bytes += static_cast<uint32_t>(n);
  }
  return 0;
}

namespace {

class PosixEngine : public IoEngine {
 public:
  explicit PosixEngine(int num_threads) : threads_(num_threads) {}
  const char* name() const override { return "posix"; }
  Status register_pool(const HostPool&) override { return Status::Ok(); }
  bool has_registered_buffers() const override { return false; }

  void submit(IoRequest* const* requests, size_t n) override {
    for (size_t i = 0; i < n; ++i) {
      IoRequest* r = requests[i];
      threads_.post([r] { r->owner->on_io_done(r, pread_fully(r)); });
    }
  }

 private:
  ThreadPool threads_;
};

}  // namespace

Status make_posix_engine(int num_threads, std::unique_ptr<IoEngine>* out) {
  if (num_threads <= 0) {
    return make_status(Code::kInvalidArgument, "posix engine needs at least one thread");
  }
  out->reset(new PosixEngine(num_threads));
  return Status::Ok();
}

#ifndef DUALKV_HAVE_URING
Status make_uring_engine(int, std::unique_ptr<IoEngine>*) {
  return make_status(Code::kUnavailable, "this build has no io_uring (liburing not found)");
}
#endif

}  // namespace dualkv
