// Checking and removing block files that other processes may be replacing at the same time.
//
// Several processes share a store directory and publish blocks by rename(), so the file at a
// block path can change between any two system calls. A damaged file is removed only if the
// path still holds that very file, and a block file counts as stored only once read back.
#pragma once

#include <sys/stat.h>

#include <string>

#include "dualkv/block_file.h"

namespace dualkv {

enum class RemoveResult {
  kRemoved,   // the path held the file we checked; it is gone
  kGone,      // the path held nothing any more
  kReplaced,  // another file had been published there; it was left in place
  kFailed,    // the path could not be moved aside (permissions, a directory, ...)
};

// Removes the file at `path` only if it is the file `checked` describes (device and inode,
// from fstat of the descriptor that read it). The path is renamed aside first (atomic), the
// file taken compared with `checked`: ours is deleted, another put back without replacing
// whatever may have been published there since.
RemoveResult remove_if_same(const std::string& path, const struct stat& checked);

// Opens a block path for reading without waiting on it (a FIFO there would block an
// ordinary open until some writer appears). Returns the descriptor, or -1 with errno set;
// ENODEV when the path holds something other than a regular file. `flags` adds to O_RDONLY.
int open_block_file(const std::string& path, int flags, struct stat* st);

// True when the file at `path` is a whole block for `key` holding exactly the Layer Blocks
// whose CRCs the encoded header `header` lists: read back in full and every CRC checked.
bool is_block_intact(const BlockLayout& layout, const std::string& path, const uint8_t* key,
                     const char* header);

}  // namespace dualkv
