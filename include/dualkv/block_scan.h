// Scanning a namespace directory: what reopening a store, `dualkv store info|gc` need.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dualkv/block_file.h"
#include "dualkv/status.h"

namespace dualkv {

struct ScanResult {
  std::vector<uint8_t> keys;        // num_blocks * key_bytes, the good blocks
  std::vector<uint8_t> parents;     // num_blocks * key_bytes (zero where there is none)
  std::vector<uint8_t> has_parent;  // num_blocks
  uint64_t num_bad = 0;             // header unreadable, damaged, wrong layout or size
  uint64_t num_bad_removed = 0;
  uint64_t num_temp = 0;            // leftovers of writers that died before publishing
  uint64_t num_temp_removed = 0;
  uint64_t num_other = 0;           // files that are neither blocks nor temp files
  uint64_t block_bytes = 0;         // on-disk bytes of the good blocks
  std::vector<std::string> bad_examples;  // "path: reason", the first few
};

// Reads only each block's header page. remove_bad deletes bad block files; temp files older
// than remove_temp_after_s seconds are deleted (a negative value keeps them all, since a
// younger one may belong to a writer that is still running).
Status scan_blocks(const BlockLayout& layout, const std::string& dir, bool remove_bad,
                   double remove_temp_after_s, ScanResult* out);

}  // namespace dualkv
