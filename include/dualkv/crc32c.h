// CRC32C (Castagnoli), the checksum of block headers and Layer Blocks.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dualkv {

// CRC32C of `len` bytes, continuing from `crc` (0 for a fresh checksum). Uses SSE4.2 with three
// interleaved streams, so one core checks a few GB/s more than the disk delivers.
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);

}  // namespace dualkv
