// BlockIO: batched loads and stores of Full Blocks (or layer ranges) between block files and
// memory, tracked by handles. It owns the I/O engine and the writer threads; the pool is
// shared with whoever else registers it (transfer engine, CUDA).
#pragma once

#include <sys/stat.h>
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dualkv/block_file.h"
#include "dualkv/host_pool.h"
#include "dualkv/io_engine.h"
#include "dualkv/status.h"
#include "dualkv/thread_pool.h"

namespace dualkv {

// Everything a BlockIO is opened with besides its pool: one struct with named fields, filled
// once from the Python StoreConfig (dualkv.store.config.block_io_options).
struct BlockIOOptions {
  BlockLayout layout;            // block shape, key length and namespace fingerprint
  std::string dir;               // the namespace directory, holding the block files
  std::string backend = "auto";  // "auto" | "io_uring" | "posix"
  int queue_depth = 32;          // reads in flight (io_uring)
  int num_read_threads = 4;      // posix engine
  int num_write_threads = 2;
  bool direct_io = true;         // O_DIRECT where the filesystem allows it
  bool fsync = false;            // a store batch reports only once the filesystem has flushed it
};

struct BlockIoStats {
  std::atomic<uint64_t> blocks_loaded{0}, blocks_stored{0}, stores_skipped_existing{0};
  std::atomic<uint64_t> missing{0}, corrupt{0}, read_errors{0}, write_errors{0};
  std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, bounce_bytes{0}, files_removed{0};
  std::atomic<uint64_t> flushes{0};  // group commits of fsync'ed store batches
  // A damaged file this process read had been replaced by another process's block before it
  // could be removed: that block was left in place.
  std::atomic<uint64_t> removes_skipped_replaced{0};
  std::atomic<uint64_t> stores_replaced_damaged{0};  // a damaged file at the path was rewritten
};

struct Batch;  // one handle's blocks: per-block results and a condition to wait on
std::shared_ptr<Batch> make_batch(size_t num_blocks);
void finish_batch_block(Batch* batch, size_t i, bool is_ok, const Status& error);

class BlockIO {
 public:
  static Status create(const BlockIOOptions& options, std::shared_ptr<HostPool> pool,
                       std::unique_ptr<BlockIO>* out);
  ~BlockIO();  // waits for every batch in flight (unless close() abandoned them)
  BlockIO(const BlockIO&) = delete;
  BlockIO& operator=(const BlockIO&) = delete;

  // keys: n * key_bytes. Loads read layers [first, last) plus the header and verify both.
  Status load(const uint8_t* keys, size_t n, const int64_t* slots, uint32_t first,
              uint32_t last, uint64_t* handle);
  // dst_ptrs: n * (last - first) addresses, one per Layer Block (layer_block_bytes each).
  Status load_into(const uint8_t* keys, size_t n, const int64_t* dst_ptrs, uint32_t first,
                   uint32_t last, uint64_t* handle);
  // parent: key of the block before keys[0], or nullptr for a chain that starts here.
  Status store(const uint8_t* keys, size_t n, const int64_t* slots, const uint8_t* parent,
               uint64_t* handle);
  // src_ptrs: n * num_layers addresses, one per Layer Block.
  Status store_from(const uint8_t* keys, size_t n, const int64_t* src_ptrs,
                    const uint8_t* parent, uint64_t* handle);

  // ok gets one byte per block (1 = done and verified); first_error the first store error.
  Status wait(uint64_t handle, double timeout_s, std::vector<uint8_t>* ok, Status* first_error);
  Status poll(uint64_t handle, bool* is_done);
  // When the batch's last block finished, in ns of the steady clock (CLOCK_MONOTONIC, the
  // clock of Python's time.monotonic()); -1 while blocks are in flight. For throughput
  // figures that must not depend on when the caller happened to poll.
  Status finished_at(uint64_t handle, int64_t* monotonic_ns);
  Status release(uint64_t handle, double timeout_s);
  // Waits for every batch in flight until the deadline and returns how many batches (and
  // blocks, in *num_blocks) it abandoned. With any abandoned, I/O threads still use this
  // object, its pool and their batches (a stalled device: a frozen filesystem), so it must
  // never be destroyed: is_abandoned() tells the owner to leak it (the binding's deleter does).
  int64_t drain(double timeout_s, int64_t* num_blocks);
  bool is_abandoned() const { return is_abandoned_.load(); }
  void remove_files(const uint8_t* keys, size_t n);

  const BlockLayout& layout() const { return options_.layout; }
  const BlockIOOptions& options() const { return options_; }
  const char* backend() const { return engine_->name(); }
  bool is_direct_read() const { return is_direct_read_; }
  bool is_direct_write() const { return is_direct_write_; }
  bool has_registered_buffers() const { return engine_->has_registered_buffers(); }
  BlockIoStats& stats() { return stats_; }
  std::string path_of(const uint8_t* key) const {
    return block_path(options_.dir, key, options_.layout.key_bytes);
  }

  // Used by the operations (block_io.cpp / block_write.cpp).
  // -1 with errno ENODEV when the path holds something other than a regular file.
  int open_for_read(const std::string& path, struct stat* st);
  // Removes the damaged block file `checked` describes, unless another process has published
  // a block at its path since (then that one stays).
  void remove_damaged(const uint8_t* key, const struct stat& checked);
  // Writes a block file from pieces laid end to end (header page first) and publishes it.
  Status write_block(const uint8_t* key, const std::vector<iovec>& pieces, bool* is_skipped);
  Status flush_filesystem();  // syncfs() of the filesystem holding the store
  HostPool& pool() { return *pool_; }
  IoEngine& engine() { return *engine_; }

 private:
  BlockIO(const BlockIOOptions& options, std::shared_ptr<HostPool> pool);
  Status check_batch(const int64_t* slots, size_t n, uint32_t first, uint32_t last) const;
  uint64_t add_batch(std::shared_ptr<Batch> batch);
  std::shared_ptr<Batch> find_batch(uint64_t handle);

  BlockIOOptions options_;
  std::shared_ptr<HostPool> pool_;
  BlockIoStats stats_;
  std::atomic<bool> is_direct_read_{true};
  std::atomic<bool> is_direct_write_{true};
  std::atomic<bool> is_abandoned_{false};
  std::string writer_id_;  // random per process: temp names never collide across machines
  std::atomic<uint64_t> next_temp_{0};

  std::mutex mu_;
  uint64_t next_handle_ = 1;
  std::map<uint64_t, std::shared_ptr<Batch>> batches_;
  std::unique_ptr<IoEngine> engine_;     // destroyed before batches_: drains reads
  std::unique_ptr<ThreadPool> openers_;  // opens a batch's block files in parallel
  std::unique_ptr<ThreadPool> writers_;  // destroyed first: drains writes
};

}  // namespace dualkv
