// IoEngine: reads file ranges into memory, asynchronously. Two implementations with one API:
// io_uring (O_DIRECT READ_FIXED into registered pool chunks; io_engine_uring.cpp) and posix
// (pread on a small thread pool; io_engine_posix.cpp), picked at run time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "dualkv/host_pool.h"
#include "dualkv/status.h"

namespace dualkv {

struct IoRequest;

// Gets each request back exactly once, on an engine thread, with 0 or a positive errno.
class IoCompletion {
 public:
  virtual ~IoCompletion() = default;
  virtual void on_io_done(IoRequest* request, int error) = 0;
};

// One contiguous read of `len` bytes at `offset` of `fd` into `addr`. The engine resubmits
// short reads until all bytes arrived; end of file before that is EIO.
struct IoRequest {
  int fd = -1;
  uint64_t offset = 0;
  char* addr = nullptr;
  uint32_t len = 0;
  int buf_index = -1;  // fixed-buffer chunk holding addr, or -1 for unregistered memory
  uint32_t num_done_bytes = 0;
  IoCompletion* owner = nullptr;
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual const char* name() const = 0;
  // Registers the pool's chunks once; after that requests into the pool carry buf_index.
  virtual Status register_pool(const HostPool& pool) = 0;
  virtual bool has_registered_buffers() const = 0;
  virtual void submit(IoRequest* const* requests, size_t n) = 0;
};

Status make_posix_engine(int num_threads, std::unique_ptr<IoEngine>* out);
// Unavailable when the build has no liburing or the kernel refuses io_uring (containers).
Status make_uring_engine(int queue_depth, std::unique_ptr<IoEngine>* out);

// Reads `request` synchronously with pread, resubmitting short reads; returns 0 or an errno.
int pread_fully(IoRequest* request);

}  // namespace dualkv
