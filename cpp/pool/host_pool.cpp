// Host pool memory: 2 MiB huge pages when the kernel has them reserved, else normal pages with
// transparent huge pages requested. CUDA host registration goes through the CUDA runtime
// loaded with dlopen, so the core neither links CUDA nor needs it installed.
#include "dualkv/host_pool.h"

#include <dlfcn.h>
#include <sys/mman.h>

#include <fstream>
#include <string>

namespace dualkv {
namespace {

constexpr size_t kHugePageBytes = 2u << 20;
constexpr size_t kMaxChunkBytes = 1ull << 30;

size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

bool transparent_huge_pages_on() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(f, line);
  return line.find("[always]") != std::string::npos ||
         line.find("[madvise]") != std::string::npos;
}

using GetDeviceCountFn = int (*)(int*);
using HostRegisterFn = int (*)(void*, size_t, unsigned int);
using HostUnregisterFn = int (*)(void*);

void* open_cudart() {
  for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12",
                           "libcudart.so.11.0"}) {
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return handle;
  }
  return nullptr;
}

}  // namespace

Status HostPool::create(size_t num_slots, size_t slot_bytes, bool try_huge_pages,
                        CudaRegister cuda, std::unique_ptr<HostPool>* out) {
  if (num_slots == 0 || slot_bytes == 0 || slot_bytes % 4096 != 0) {
    return make_status(Code::kInvalidArgument,
                       "HostPool needs num_slots > 0 and slot_bytes a positive multiple of 4096");
  }
  if (slot_bytes > kMaxChunkBytes) {
    return make_status(Code::kInvalidArgument, "HostPool slot_bytes must be at most 1 GiB");
  }
  std::unique_ptr<HostPool> pool(new HostPool());
  pool->slot_bytes_ = slot_bytes;
  pool->num_slots_ = num_slots;
  size_t bytes = num_slots * slot_bytes;
  void* mem = MAP_FAILED;
  if (try_huge_pages) {
    pool->map_bytes_ = round_up(bytes, kHugePageBytes);
    mem = mmap(nullptr, pool->map_bytes_, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (mem != MAP_FAILED) pool->page_kind_ = "hugetlb-2MiB";
  }
  if (mem == MAP_FAILED) {
    pool->map_bytes_ = round_up(bytes, 4096);
    mem = mmap(nullptr, pool->map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
               -1, 0);
    if (mem == MAP_FAILED) {
      return make_status(Code::kOutOfMemory,
                         "HostPool: mmap of " + std::to_string(bytes) + " bytes failed");
    }
    bool thp = try_huge_pages && transparent_huge_pages_on() &&
               madvise(mem, pool->map_bytes_, MADV_HUGEPAGE) == 0;
    pool->page_kind_ = thp ? "4KiB+THP" : "4KiB";
  }
  pool->base_ = static_cast<char*>(mem);
  pool->slots_per_chunk_ = kMaxChunkBytes / slot_bytes;
  for (size_t first = 0; first < num_slots; first += pool->slots_per_chunk_) {
    size_t count = std::min(pool->slots_per_chunk_, num_slots - first);
    pool->chunks_.push_back({pool->base_ + first * slot_bytes, count * slot_bytes});
  }
  pool->free_list_.reserve(num_slots);
  for (size_t i = num_slots; i-- > 0;) pool->free_list_.push_back(static_cast<int64_t>(i));
  pool->is_in_use_.assign(num_slots, 0);
  Status status;
  pool->register_cuda(cuda, &status);
  if (!status.ok()) return status;
  *out = std::move(pool);
  return Status::Ok();
}

void HostPool::register_cuda(CudaRegister mode, Status* status) {
  if (mode == CudaRegister::kOff) {
    cuda_note_ = "off";
    return;
  }
  void* lib = open_cudart();
  int num_devices = 0;
  auto count_fn = lib ? reinterpret_cast<GetDeviceCountFn>(dlsym(lib, "cudaGetDeviceCount"))
                      : nullptr;
  if (count_fn == nullptr || count_fn(&num_devices) != 0 || num_devices == 0) {
    cuda_note_ = lib ? "no CUDA device" : "CUDA runtime (libcudart) not found";
    if (lib) dlclose(lib);
    if (mode == CudaRegister::kRequired) *status = make_status(Code::kUnavailable,
        "HostPool: CUDA registration required but " + cuda_note_);
    return;
  }
  auto register_fn = reinterpret_cast<HostRegisterFn>(dlsym(lib, "cudaHostRegister"));
  int rc = register_fn ? register_fn(base_, map_bytes_, 1 /* cudaHostRegisterPortable */) : -1;
  if (rc != 0) {
    cuda_note_ = "cudaHostRegister failed with error " + std::to_string(rc);
    dlclose(lib);
    if (mode == CudaRegister::kRequired) *status = make_status(Code::kOutOfMemory,
        "HostPool: " + cuda_note_ + " (page-locking needs RLIMIT_MEMLOCK: raise it with "
        "`ulimit -l unlimited`, systemd LimitMEMLOCK=infinity, or CAP_IPC_LOCK)");
    return;
  }
  cuda_registered_ = true;
  cuda_note_ = "registered with " + std::to_string(num_devices) + " CUDA device(s)";
  cudart_ = lib;
}

HostPool::~HostPool() {
  if (cudart_ != nullptr) {
    auto unregister_fn = reinterpret_cast<HostUnregisterFn>(dlsym(cudart_, "cudaHostUnregister"));
    if (unregister_fn) unregister_fn(base_);
    // The runtime stays loaded: unloading libcudart while CUDA is initialised is unsafe.
  }
  if (base_ != nullptr) munmap(base_, map_bytes_);
}

size_t HostPool::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return free_list_.size();
}

Status HostPool::check_slot(int64_t slot) const {
  if (slot < 0 || static_cast<size_t>(slot) >= num_slots_) {
    return make_status(Code::kInvalidArgument, "slot " + std::to_string(slot) +
                       " outside the pool's 0.." + std::to_string(num_slots_ - 1));
  }
  return Status::Ok();
}

Status HostPool::alloc(size_t n, int64_t* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n > free_list_.size()) {
    return make_status(Code::kOutOfMemory, "HostPool: asked for " + std::to_string(n) +
                       " slots, " + std::to_string(free_list_.size()) + " free of " +
                       std::to_string(num_slots_));
  }
  for (size_t i = 0; i < n; ++i) {
    out[i] = free_list_.back();
    free_list_.pop_back();
    is_in_use_[out[i]] = 1;
  }
  return Status::Ok();
}

Status HostPool::free(const int64_t* ids, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  // Validate the whole batch first (marking each id 2 catches duplicates inside it), so a bad
  // batch changes nothing.
  for (size_t i = 0; i < n; ++i) {
    bool is_valid = ids[i] >= 0 && static_cast<size_t>(ids[i]) < num_slots_ &&
                    is_in_use_[ids[i]] == 1;
    if (!is_valid) {
      for (size_t j = 0; j < i; ++j) is_in_use_[ids[j]] = 1;
      return make_status(Code::kInvalidArgument, "HostPool.free: slot " +
                         std::to_string(ids[i]) + " is not allocated (or repeated)");
    }
    is_in_use_[ids[i]] = 2;
  }
  for (size_t i = 0; i < n; ++i) {
    is_in_use_[ids[i]] = 0;
    free_list_.push_back(ids[i]);
  }
  return Status::Ok();
}

int HostPool::chunk_of(const void* addr) const {
  auto p = static_cast<const char*>(addr);
  if (p < base_ || p >= base_ + num_slots_ * slot_bytes_) return -1;
  return static_cast<int>(static_cast<size_t>(p - base_) / slot_bytes_ / slots_per_chunk_);
}

}  // namespace dualkv
