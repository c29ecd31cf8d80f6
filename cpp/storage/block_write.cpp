// Batched stores. Each block is written by a writer thread into a temporary file beside its
// final name and published with rename(), so a reader sees a whole block or none, whatever
// happens to the writer. Same key, same bytes (content addressing): concurrent writers race
// harmlessly, and a block already on disk (read back whole) is not written again.
//
// Durability (options.fsync) is per batch, not per block: the batch's blocks are written and
// published without a flush each, and the writer that finishes the last of them flushes the
// filesystem once (syncfs) before any block of the batch reports. One journal commit and one
// device cache flush per batch instead of one per block (fdatasync per block ran at
// 0.75-0.84x of fio's sequential write). A block is visible before it is durable: a crash in
// between can leave it empty or torn, which its header and CRCs turn into a miss.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dualkv/block_io.h"
#include "dualkv/block_remove.h"

namespace dualkv {

namespace {

Status errno_status(const std::string& what, int err) {
  return make_status(Code::kStorageError, what + ": " + std::strerror(err), err);
}

int make_parents(const std::string& path) {
  // <dir>/<aa>/<bb>/<key>.blk: create <dir>/<aa> and <dir>/<aa>/<bb> when missing.
  size_t last = path.rfind('/');
  size_t mid = path.rfind('/', last - 1);
  for (size_t end : {mid, last}) {
    if (mkdir(path.substr(0, end).c_str(), 0755) != 0 && errno != EEXIST) return errno;
  }
  return 0;
}

// Writes the pieces one after another from offset 0; `iov` is a copy, advanced past what a
// short write took.
int write_fully(int fd, std::vector<iovec> iov) {
  size_t next = 0;
  off_t offset = 0;
  while (next < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - next, IOV_MAX));
    ssize_t n = pwritev(fd, iov.data() + next, count, offset);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return errno;
    }
    if (n == 0) return ENOSPC;
    offset += n;
    for (size_t left = static_cast<size_t>(n); left > 0;) {
      const size_t take = std::min(left, iov[next].iov_len);
      iov[next].iov_base = static_cast<char*>(iov[next].iov_base) + take;
      iov[next].iov_len -= take;
      left -= take;
      if (iov[next].iov_len == 0) ++next;
    }
    while (next < iov.size() && iov[next].iov_len == 0) ++next;
  }
  return 0;
}

}  // namespace

Status BlockIO::write_block(const uint8_t* key, const std::vector<iovec>& pieces,
                            bool* is_skipped) {
  std::string path = path_of(key);
  // Same key, same bytes: a block already there is not written again, but only once read
  // back whole. A damaged file (or a FIFO) there is replaced, never acknowledged.
  struct stat st;
  const bool is_present = lstat(path.c_str(), &st) == 0;
  const char* header = static_cast<const char*>(pieces[0].iov_base);
  *is_skipped = is_present && is_block_intact(layout(), path, key, header);
  if (*is_skipped) return Status::Ok();
  if (int err = make_parents(path)) return errno_status("creating folders for " + path, err);
  std::string hex = to_hex(key, layout().key_bytes);
  std::string temp = path.substr(0, path.rfind('/') + 1) + "." + hex + "." + writer_id_ + "." +
                     std::to_string(next_temp_++) + ".tmp";
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  int fd = -1;
  bool is_direct = is_direct_write_;
  if (is_direct) {
    fd = open(temp.c_str(), flags | O_DIRECT, 0644);
    if (fd < 0 && errno == EINVAL) is_direct_write_ = is_direct = false;  // e.g. tmpfs
  }
  if (!is_direct) fd = open(temp.c_str(), flags, 0644);
  if (fd < 0) return errno_status("creating " + temp, errno);
  int err = write_fully(fd, pieces);
  if (err == EINVAL && is_direct) {  // filesystems that open O_DIRECT but refuse the write
    is_direct_write_ = false;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_DIRECT);
    err = write_fully(fd, pieces);
  }
  if (close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && rename(temp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    unlink(temp.c_str());  // nothing published: the store stays as it was
    return errno_status("writing block " + hex, err);
  }
  if (is_present) stats_.stores_replaced_damaged++;
  return Status::Ok();
}

Status BlockIO::flush_filesystem() {
  int fd = open(options_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_status("opening " + options_.dir + " to flush it", errno);
  int err = syncfs(fd) == 0 ? 0 : errno;
  close(fd);
  if (err != 0) return errno_status("flushing the filesystem of " + options_.dir, err);
  stats_.flushes++;
  return Status::Ok();
}

namespace {

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};

void report_store(BlockIO* io, Batch* batch, size_t i, const Status& s, bool is_skipped) {
  BlockIoStats& stats = io->stats();
  if (!s.ok()) {
    stats.write_errors++;
  } else if (is_skipped) {
    stats.stores_skipped_existing++;
  } else {
    stats.blocks_stored++;
    stats.bytes_written += io->layout().full_block_bytes();
  }
  finish_batch_block(batch, i, s.ok(), s);
}

// Holds an fsync'ed batch's block results until the last block is written, then flushes once
// and reports them all (a failed flush fails every block this batch wrote).
class GroupCommit {
 public:
  GroupCommit(BlockIO* io, Batch* batch, size_t n)
      : io_(io), batch_(batch), results_(n), is_skipped_(n, 0), num_remaining_(n) {}

  void block_done(size_t i, Status s, bool is_skipped) {
    results_[i] = std::move(s);
    is_skipped_[i] = is_skipped ? 1 : 0;
    if (num_remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    bool wrote_any = false;
    for (size_t j = 0; j < results_.size(); ++j) wrote_any |= results_[j].ok() && !is_skipped_[j];
    const Status flushed = wrote_any ? io_->flush_filesystem() : Status::Ok();
    for (size_t j = 0; j < results_.size(); ++j) {
      const bool wrote = results_[j].ok() && !is_skipped_[j];
      report_store(io_, batch_, j, wrote && !flushed.ok() ? flushed : results_[j], is_skipped_[j]);
    }
  }

 private:
  BlockIO* io_;
  Batch* batch_;
  std::vector<Status> results_;       // each written by its block's writer before the count
  std::vector<uint8_t> is_skipped_;   // drops; read by the last one after it
  std::atomic<size_t> num_remaining_;
};

// What every writer task of one store batch shares: the chain's keys (copied: the caller's
// arrays are gone once store() returns), its first block's parent, and the group commit when
// the batch is fsync'ed.
struct StoreBatch {
  StoreBatch(BlockIO* io, Batch* batch, const uint8_t* keys, size_t n, const uint8_t* parent,
             bool fsync)
      : io(io), batch(batch), key_bytes(io->layout().key_bytes),
        keys(keys, keys + n * key_bytes) {
    if (parent != nullptr) first_parent.assign(parent, parent + key_bytes);
    if (fsync) commit = std::make_unique<GroupCommit>(io, this->batch, n);
  }
  const uint8_t* key(size_t i) const { return keys.data() + i * key_bytes; }
  const uint8_t* parent(size_t i) const {
    return i > 0 ? key(i - 1) : first_parent.empty() ? nullptr : first_parent.data();
  }

  BlockIO* io;
  Batch* batch;
  size_t key_bytes;
  std::vector<uint8_t> keys, first_parent;
  std::unique_ptr<GroupCommit> commit;
};

// Writes block i from `pieces` (its header already encoded) and reports it.
void write_and_report(const StoreBatch& sb, size_t i, const std::vector<iovec>& pieces) {
  bool is_skipped = false;
  Status s = sb.io->write_block(sb.key(i), pieces, &is_skipped);
  if (sb.commit != nullptr) sb.commit->block_done(i, std::move(s), is_skipped);
  else report_store(sb.io, sb.batch, i, s, is_skipped);
}

// A block image in one buffer: header and padded Layer Blocks, written as one piece.
void store_image(const StoreBatch& sb, size_t i, char* block) {
  encode_header(sb.io->layout(), sb.key(i), sb.parent(i), block);
  write_and_report(sb, i, {iovec{block, sb.io->layout().full_block_bytes()}});
}

// Layer Blocks wherever they are (an engine's KV pages): written straight from there, behind
// a header page of their own, when O_DIRECT can take them as they are (4 KiB-aligned
// addresses, Layer Blocks a whole number of 4 KiB pages, so no padding between them).
bool can_write_in_place(const BlockLayout& layout, const int64_t* ptrs, size_t n) {
  if (layout.layer_block_bytes() % 4096 != 0 || layout.num_layers + 1 > IOV_MAX) return false;
  for (size_t i = 0; i < n; ++i) {
    if (ptrs[i] % 4096 != 0) return false;
  }
  return true;
}

void store_in_place(const StoreBatch& sb, size_t i, const int64_t* ptrs) {
  const BlockLayout& layout = sb.io->layout();
  std::unique_ptr<char, AlignedFree> header(
      static_cast<char*>(std::aligned_alloc(4096, layout.header_bytes())));
  std::vector<const char*> layers(layout.num_layers);
  std::vector<iovec> pieces{iovec{header.get(), layout.header_bytes()}};
  for (uint32_t l = 0; l < layout.num_layers; ++l) {
    layers[l] = reinterpret_cast<const char*>(ptrs[l]);
    pieces.push_back(iovec{const_cast<char*>(layers[l]), layout.layer_block_bytes()});
  }
  encode_header(layout, sb.key(i), sb.parent(i), header.get(), layers.data());
  write_and_report(sb, i, pieces);
}

// Other Layer Blocks: gathered into a page-aligned block image (zero padding) first.
void store_gathered(const StoreBatch& sb, size_t i, const int64_t* ptrs) {
  const BlockLayout& layout = sb.io->layout();
  const size_t bytes = layout.full_block_bytes();
  std::unique_ptr<char, AlignedFree> block(static_cast<char*>(std::aligned_alloc(4096, bytes)));
  std::memset(block.get(), 0, bytes);
  for (uint32_t l = 0; l < layout.num_layers; ++l) {
    std::memcpy(block.get() + layout.layer_offset(l), reinterpret_cast<const char*>(ptrs[l]),
                layout.layer_block_bytes());
  }
  sb.io->stats().bounce_bytes += layout.num_layers * layout.layer_block_bytes();
  store_image(sb, i, block.get());
}

}  // namespace

Status BlockIO::store(const uint8_t* keys, size_t n, const int64_t* slots,
                      const uint8_t* parent, uint64_t* handle) {
  Status s = check_batch(slots, n, 0, layout().num_layers);
  if (!s.ok()) return s;
  auto batch = make_batch(n);
  auto sb = std::make_shared<StoreBatch>(this, batch.get(), keys, n, parent, options_.fsync);
  *handle = add_batch(batch);
  for (size_t i = 0; i < n; ++i) {  // the slots stay the caller's until wait() says done
    char* block = pool_->slot_ptr(slots[i]);
    writers_->post([sb, i, block] { store_image(*sb, i, block); });
  }
  return Status::Ok();
}

Status BlockIO::store_from(const uint8_t* keys, size_t n, const int64_t* src_ptrs,
                           const uint8_t* parent, uint64_t* handle) {
  const size_t width = layout().num_layers;
  for (size_t i = 0; i < n * width; ++i) {
    if (src_ptrs[i] == 0) return make_status(Code::kInvalidArgument, "null source address");
  }
  auto batch = make_batch(n);
  auto sb = std::make_shared<StoreBatch>(this, batch.get(), keys, n, parent, options_.fsync);
  auto sources = std::make_shared<std::vector<int64_t>>(src_ptrs, src_ptrs + n * width);
  const bool in_place = can_write_in_place(layout(), src_ptrs, n * width);
  *handle = add_batch(batch);
  for (size_t i = 0; i < n; ++i) {
    writers_->post([sb, i, width, sources, in_place] {
      const int64_t* ptrs = sources->data() + i * width;
      if (in_place) store_in_place(*sb, i, ptrs);
      else store_gathered(*sb, i, ptrs);
    });
  }
  return Status::Ok();
}

void BlockIO::remove_files(const uint8_t* keys, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (unlink(path_of(keys + i * layout().key_bytes).c_str()) == 0) stats_.files_removed++;
  }
}

}  // namespace dualkv
