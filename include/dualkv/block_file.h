// Block files: one file per Full Block, laid out exactly like a pool slot (header page, then
// Layer Blocks on 4 KiB boundaries), so a read lands ready to use.
//
// Header (little-endian), the first HEADER_FIXED_BYTES = 192 bytes of the header page:
//   0  magic "DUALKVB1"       8  u32 format version   12 u32 flags (bit 0: has parent)
//   16 layout fingerprint[16] 32 key[64] (key_bytes used, rest zero)   96 parent key[64]
//   160 u32 key_bytes  164 u32 token count  168 u32 num_layers  172 u32 bytes_per_token_layer
//   176 u32 header_bytes  180 u32 layer_stride  184 u32 reserved  188 u32 header CRC32C
//   192 u32 CRC32C of each Layer Block's layer_block_bytes packed bytes, num_layers of them
// The header CRC covers bytes [0, 188) and the Layer Block CRCs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dualkv/status.h"

namespace dualkv {

constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderFixedBytes = 192;
constexpr size_t kMaxKeyBytes = 64;
constexpr size_t kFingerprintBytes = 16;

struct BlockLayout {
  uint32_t num_layers = 0;
  uint32_t bytes_per_token_layer = 0;
  uint32_t block_tokens = 0;
  uint32_t key_bytes = 32;
  uint8_t fingerprint[kFingerprintBytes] = {};

  uint64_t layer_block_bytes() const { return uint64_t(block_tokens) * bytes_per_token_layer; }
  uint64_t layer_stride() const { return (layer_block_bytes() + 4095) / 4096 * 4096; }
  uint64_t header_bytes() const {
    return (kHeaderFixedBytes + 4ull * num_layers + 4095) / 4096 * 4096;
  }
  uint64_t layer_offset(uint32_t layer) const { return header_bytes() + layer * layer_stride(); }
  uint64_t full_block_bytes() const { return layer_offset(num_layers); }
};

// Fills the header page at `slot` (header_bytes long) for the Layer Blocks that follow it in
// the same slot: computes every Layer Block CRC, then the header CRC.
void encode_header(const BlockLayout& layout, const uint8_t* key, const uint8_t* parent,
                   char* slot);
// The same header, in `header`, for Layer Blocks that lie at layers[0..num_layers) instead.
void encode_header(const BlockLayout& layout, const uint8_t* key, const uint8_t* parent,
                   char* header, const char* const* layers);

// Checks a header page read from disk: magic, version, layout, key (when key != nullptr) and
// header CRC. Returns a reason on failure, empty on success.
std::string check_header(const BlockLayout& layout, const uint8_t* key, const char* header);
uint32_t header_layer_crc(const char* header, uint32_t layer);
bool header_has_parent(const char* header);
const uint8_t* header_key(const char* header);
const uint8_t* header_parent(const char* header);

std::string to_hex(const uint8_t* bytes, size_t n);
bool from_hex(const std::string& hex, uint8_t* out, size_t n);

// <dir>/<key[0] hex>/<key[1] hex>/<key hex>.blk: 65,536 folders keep 10 M blocks at ~150 each.
std::string block_path(const std::string& dir, const uint8_t* key, size_t key_bytes);
bool is_temp_name(const std::string& name);  // ".<key hex>.<writer id>.tmp"

}  // namespace dualkv
