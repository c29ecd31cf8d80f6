// Walks <dir>/<aa>/<bb>/ and checks each block's header page (4 KiB-ish, never the payload),
// so rebuilding the index of a large store costs one small read per block.
#include "dualkv/block_scan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "dualkv/block_remove.h"

namespace dualkv {
namespace {

constexpr size_t kMaxBadExamples = 8;

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  closedir(d);
  return names;
}

bool is_fanout_name(const std::string& name) {
  uint8_t byte;
  return from_hex(name, &byte, 1);
}

// Empty when the file at `path` has a good header for `key`; `st` describes the file read
// (zeroed when nothing was opened, as for a FIFO or folder at the path).
std::string check_block_file(const BlockLayout& layout, const std::string& path,
                             const uint8_t* key, char* header, struct stat* st) {
  int fd = open_block_file(path, 0, st);
  if (fd < 0) {
    const int err = errno;
    *st = {};
    return err == ENODEV ? "not a regular file" : std::string("open: ") + std::strerror(err);
  }
  std::string reason;
  if (static_cast<uint64_t>(st->st_size) != layout.full_block_bytes()) {
    reason = "size " + std::to_string(st->st_size) + " is not a Full Block";
  } else if (pread(fd, header, layout.header_bytes(), 0) !=
             static_cast<ssize_t>(layout.header_bytes())) {
    reason = "short header read";
  } else {
    reason = check_header(layout, key, header);
  }
  close(fd);
  return reason;
}

void scan_file(const BlockLayout& layout, const std::string& path, const std::string& name,
               bool remove_bad, double remove_temp_after_s, char* header, ScanResult* out) {
  if (is_temp_name(name)) {
    out->num_temp++;
    struct stat st;
    double age = stat(path.c_str(), &st) == 0 ? difftime(time(nullptr), st.st_mtime) : 0.0;
    if (remove_temp_after_s >= 0 && age >= remove_temp_after_s && unlink(path.c_str()) == 0) {
      out->num_temp_removed++;
    }
    return;
  }
  size_t hex_len = 2 * layout.key_bytes;
  uint8_t key[kMaxKeyBytes];
  if (name.size() != hex_len + 4 || name.compare(hex_len, 4, ".blk") != 0 ||
      !from_hex(name.substr(0, hex_len), key, layout.key_bytes)) {
    out->num_other++;
    return;
  }
  struct stat st = {};
  std::string reason = check_block_file(layout, path, key, header, &st);
  if (!reason.empty()) {
    out->num_bad++;
    if (out->bad_examples.size() < kMaxBadExamples) out->bad_examples.push_back(path + ": " + reason);
    // Only the file checked, never a block another process has published there since; what
    // is not a file the store wrote (a FIFO, a folder) is reported and left alone.
    if (remove_bad && st.st_ino != 0 && remove_if_same(path, st) == RemoveResult::kRemoved) {
      out->num_bad_removed++;
    }
    return;
  }
  out->keys.insert(out->keys.end(), key, key + layout.key_bytes);
  const uint8_t* parent = header_parent(header);
  out->parents.insert(out->parents.end(), parent, parent + layout.key_bytes);
  out->has_parent.push_back(header_has_parent(header) ? 1 : 0);
  out->block_bytes += layout.full_block_bytes();
}

}  // namespace

Status scan_blocks(const BlockLayout& layout, const std::string& dir, bool remove_bad,
                   double remove_temp_after_s, ScanResult* out) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return make_status(Code::kNotFound, "no store directory at " + dir);
  }
  std::unique_ptr<char[]> header(new char[layout.header_bytes()]);
  for (const std::string& a : list_dir(dir)) {
    if (!is_fanout_name(a)) continue;
    for (const std::string& b : list_dir(dir + "/" + a)) {
      if (!is_fanout_name(b)) continue;
      std::string sub = dir + "/" + a + "/" + b;
      for (const std::string& name : list_dir(sub)) {
        scan_file(layout, sub + "/" + name, name, remove_bad, remove_temp_after_s,
                  header.get(), out);
      }
    }
  }
  return Status::Ok();
}

}  // namespace dualkv
