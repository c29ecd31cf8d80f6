// Checking and removing block files while other processes publish at the same paths.
#include "dualkv/block_remove.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <random>

#include "dualkv/crc32c.h"

namespace dualkv {
namespace {

// ".<key hex>.aside.<process id>.<n>.tmp" beside the block: a temp name, so a process that
// dies holding a file aside leaves something `dualkv store gc` cleans up.
std::string aside_path(const std::string& path) {
  static const std::string process_id = [] {
    std::random_device rd;
    uint64_t id = (uint64_t(rd()) << 32) ^ rd() ^ uint64_t(getpid());
    return to_hex(reinterpret_cast<const uint8_t*>(&id), 8);
  }();
  static std::atomic<uint64_t> next{0};
  const size_t slash = path.rfind('/') + 1;
  const size_t dot = path.rfind('.');
  std::string stem = path.substr(slash, dot > slash ? dot - slash : std::string::npos);
  return path.substr(0, slash) + "." + stem + ".aside." + process_id + "." +
         std::to_string(next++) + ".tmp";
}

// Puts a file taken aside by mistake back at `path`, unless a block was published there in
// the meantime (same key, same bytes): then the one aside is surplus.
void put_back(const std::string& aside, const std::string& path) {
  if (renameat2(AT_FDCWD, aside.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno == EINVAL || errno == ENOSYS) {  // no RENAME_NOREPLACE here: link() never replaces
    if (link(aside.c_str(), path.c_str()) != 0 && errno != EEXIST) {
      rename(aside.c_str(), path.c_str());  // no hard links either: keep the block, whatever
      return;
    }
  }
  unlink(aside.c_str());
}

bool read_fully(int fd, char* dst, size_t len, off_t offset) {
  while (len > 0) {
    ssize_t n = pread(fd, dst, len, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    dst += n;
    len -= static_cast<size_t>(n);
    offset += n;
  }
  return true;
}

struct Closer {
  int fd;
  ~Closer() { close(fd); }
};

}  // namespace

RemoveResult remove_if_same(const std::string& path, const struct stat& checked) {
  const std::string aside = aside_path(path);
  if (rename(path.c_str(), aside.c_str()) != 0) {
    return errno == ENOENT ? RemoveResult::kGone : RemoveResult::kFailed;
  }
  struct stat st;
  if (lstat(aside.c_str(), &st) == 0 && st.st_dev == checked.st_dev &&
      st.st_ino == checked.st_ino) {
    unlink(aside.c_str());
    return RemoveResult::kRemoved;
  }
  put_back(aside, path);
  return RemoveResult::kReplaced;
}

int open_block_file(const std::string& path, int flags, struct stat* st) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | flags);
  if (fd < 0) return -1;
  if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    errno = ENODEV;
    return -1;
  }
  // Blocking again: io_uring hands EAGAIN back for reads on O_NONBLOCK files.
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

bool is_block_intact(const BlockLayout& layout, const std::string& path, const uint8_t* key,
                     const char* header) {
  struct stat st;
  int fd = open_block_file(path, 0, &st);
  if (fd < 0) return false;
  Closer closer{fd};
  if (static_cast<uint64_t>(st.st_size) != layout.full_block_bytes()) return false;
  std::unique_ptr<char[]> found(new char[layout.header_bytes()]);
  if (!read_fully(fd, found.get(), layout.header_bytes(), 0)) return false;
  if (!check_header(layout, key, found.get()).empty()) return false;
  std::unique_ptr<char[]> layer(new char[layout.layer_block_bytes()]);
  for (uint32_t l = 0; l < layout.num_layers; ++l) {
    const uint32_t crc = header_layer_crc(header, l);
    if (header_layer_crc(found.get(), l) != crc ||
        !read_fully(fd, layer.get(), layout.layer_block_bytes(), layout.layer_offset(l)) ||
        crc32c(layer.get(), layout.layer_block_bytes()) != crc) {
      return false;
    }
  }
  return true;
}

}  // namespace dualkv
