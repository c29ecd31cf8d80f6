// HostPool: one page-aligned host allocation cut into equal slots, each holding one Full
// Block. Registered once (io_uring fixed buffers by the I/O engine, CUDA host registration
// here, UCX by the transfer engine through base()/size_bytes()).
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dualkv/status.h"

namespace dualkv {

enum class CudaRegister : int { kOff = 0, kAuto = 1, kRequired = 2 };

class HostPool {
 public:
  static Status create(size_t num_slots, size_t slot_bytes, bool try_huge_pages,
                       CudaRegister cuda, std::unique_ptr<HostPool>* out);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  char* base() const { return base_; }
  size_t size_bytes() const { return map_bytes_; }
  size_t slot_bytes() const { return slot_bytes_; }
  size_t num_slots() const { return num_slots_; }
  size_t num_free() const;
  const std::string& page_kind() const { return page_kind_; }
  bool is_cuda_registered() const { return cuda_registered_; }
  const std::string& cuda_note() const { return cuda_note_; }

  // All-or-nothing: either n slot ids are written to out, or OutOfMemory and nothing changes.
  Status alloc(size_t n, int64_t* out);
  Status free(const int64_t* ids, size_t n);
  Status check_slot(int64_t slot) const;  // InvalidArgument unless 0 <= slot < num_slots
  char* slot_ptr(int64_t slot) const { return base_ + static_cast<size_t>(slot) * slot_bytes_; }

  // Fixed-buffer chunks for io_uring: each at most 1 GiB and a whole number of slots, so a
  // slot never straddles two chunks. chunk_of() gives the chunk of an address in the pool.
  const std::vector<iovec>& chunks() const { return chunks_; }
  int chunk_of(const void* addr) const;

 private:
  HostPool() = default;
  void register_cuda(CudaRegister mode, Status* status);

  char* base_ = nullptr;
  size_t map_bytes_ = 0;
  size_t slot_bytes_ = 0;
  size_t num_slots_ = 0;
  size_t slots_per_chunk_ = 1;
  std::string page_kind_;
  bool cuda_registered_ = false;
  std::string cuda_note_;
  void* cudart_ = nullptr;  // dlopen handle, kept to unregister at destruction
  std::vector<iovec> chunks_;

  mutable std::mutex mu_;
  std::vector<int64_t> free_list_;   // stack of free slot ids: O(1) alloc and free
  std::vector<uint8_t> is_in_use_;   // catches double frees and frees of foreign ids
};

}  // namespace dualkv
