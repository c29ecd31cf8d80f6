// Encoding and checking of block file headers, and where block files live.
#include "dualkv/block_file.h"

#include <cstring>
#include <vector>

#include "dualkv/crc32c.h"

namespace dualkv {
namespace {

constexpr char kMagic[8] = {'D', 'U', 'A', 'L', 'K', 'V', 'B', '1'};
constexpr size_t kCrcOffset = 188;

void put_u32(char* header, size_t offset, uint32_t value) {
  std::memcpy(header + offset, &value, 4);  // x86-64 only (SSE4.2): little-endian
}

uint32_t get_u32(const char* header, size_t offset) {
  uint32_t value;
  std::memcpy(&value, header + offset, 4);
  return value;
}

uint32_t compute_header_crc(const char* header, uint32_t num_layers) {
  uint32_t crc = crc32c(header, kCrcOffset);
  return crc32c(header + kHeaderFixedBytes, 4ull * num_layers, crc);
}

}  // namespace

void encode_header(const BlockLayout& layout, const uint8_t* key, const uint8_t* parent,
                   char* slot) {
  std::vector<const char*> layers(layout.num_layers);
  for (uint32_t l = 0; l < layout.num_layers; ++l) layers[l] = slot + layout.layer_offset(l);
  encode_header(layout, key, parent, slot, layers.data());
}

void encode_header(const BlockLayout& layout, const uint8_t* key, const uint8_t* parent,
                   char* slot, const char* const* layers) {
  std::memset(slot, 0, layout.header_bytes());
  std::memcpy(slot, kMagic, 8);
  put_u32(slot, 8, kFormatVersion);
  put_u32(slot, 12, parent != nullptr ? 1u : 0u);
  std::memcpy(slot + 16, layout.fingerprint, kFingerprintBytes);
  std::memcpy(slot + 32, key, layout.key_bytes);
  if (parent != nullptr) std::memcpy(slot + 96, parent, layout.key_bytes);
  put_u32(slot, 160, layout.key_bytes);
  put_u32(slot, 164, layout.block_tokens);
  put_u32(slot, 168, layout.num_layers);
  put_u32(slot, 172, layout.bytes_per_token_layer);
  put_u32(slot, 176, static_cast<uint32_t>(layout.header_bytes()));
  put_u32(slot, 180, static_cast<uint32_t>(layout.layer_stride()));
  for (uint32_t l = 0; l < layout.num_layers; ++l) {
    uint32_t crc = crc32c(layers[l], layout.layer_block_bytes());
    put_u32(slot, kHeaderFixedBytes + 4ull * l, crc);
  }
  put_u32(slot, kCrcOffset, compute_header_crc(slot, layout.num_layers));
}

std::string check_header(const BlockLayout& layout, const uint8_t* key, const char* header) {
  if (std::memcmp(header, kMagic, 8) != 0) return "bad magic";
  if (get_u32(header, 8) != kFormatVersion) return "unknown format version";
  if (get_u32(header, 168) != layout.num_layers || get_u32(header, 172) !=
      layout.bytes_per_token_layer || get_u32(header, 164) != layout.block_tokens ||
      get_u32(header, 160) != layout.key_bytes ||
      get_u32(header, 176) != layout.header_bytes() ||
      get_u32(header, 180) != layout.layer_stride()) {
    return "layout differs";
  }
  if (std::memcmp(header + 16, layout.fingerprint, kFingerprintBytes) != 0) {
    return "layout fingerprint differs";
  }
  if (get_u32(header, kCrcOffset) != compute_header_crc(header, layout.num_layers)) {
    return "header checksum mismatch";
  }
  if (key != nullptr && std::memcmp(header + 32, key, layout.key_bytes) != 0) {
    return "key differs";
  }
  return {};
}

uint32_t header_layer_crc(const char* header, uint32_t layer) {
  return get_u32(header, kHeaderFixedBytes + 4ull * layer);
}
bool header_has_parent(const char* header) { return (get_u32(header, 12) & 1u) != 0; }
const uint8_t* header_key(const char* header) {
  return reinterpret_cast<const uint8_t*>(header + 32);
}
const uint8_t* header_parent(const char* header) {
  return reinterpret_cast<const uint8_t*>(header + 96);
}

std::string to_hex(const uint8_t* bytes, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

bool from_hex(const std::string& hex, uint8_t* out, size_t n) {
  if (hex.size() != 2 * n) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < n; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::string block_path(const std::string& dir, const uint8_t* key, size_t key_bytes) {
  std::string hex = to_hex(key, key_bytes);
  return dir + "/" + hex.substr(0, 2) + "/" + hex.substr(2, 2) + "/" + hex + ".blk";
}

bool is_temp_name(const std::string& name) {
  return name.size() > 5 && name[0] == '.' && name.compare(name.size() - 4, 4, ".tmp") == 0;
}

}  // namespace dualkv
