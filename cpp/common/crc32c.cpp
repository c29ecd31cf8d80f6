// CRC32C with the SSE4.2 crc32 instruction. The instruction has a latency of 3 cycles and a
// throughput of 1, so one stream runs at a third of the core's speed: we split the buffer into
// three lanes, checksum them at once and merge the lane states with a precomputed "append
// kLaneBytes zero bytes" operator (the CRC register update is linear over GF(2)).
#include "dualkv/crc32c.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

namespace dualkv {
namespace {

constexpr size_t kLaneBytes = 4096;

uint32_t crc_stream(uint32_t state, const uint8_t* p, size_t n) {
  uint64_t s = state;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    s = _mm_crc32_u64(s, word);
  }
  uint32_t s32 = static_cast<uint32_t>(s);
  for (; n > 0; ++p, --n) s32 = _mm_crc32_u8(s32, *p);
  return s32;
}

// shift(s) = the register after feeding kLaneBytes zero bytes from state s; linear in s, so it
// is four 256-entry tables, one per byte of s.
struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> once{};   // kLaneBytes zeros
  std::array<std::array<uint32_t, 256>, 4> twice{};  // 2 * kLaneBytes zeros

  ShiftTables() {
    static const uint8_t zeros[2 * kLaneBytes] = {};
    uint32_t basis1[32], basis2[32];
    for (int bit = 0; bit < 32; ++bit) {
      basis1[bit] = crc_stream(1u << bit, zeros, kLaneBytes);
      basis2[bit] = crc_stream(1u << bit, zeros, 2 * kLaneBytes);
    }
    for (int byte = 0; byte < 4; ++byte) {
      for (int value = 0; value < 256; ++value) {
        uint32_t a = 0, b = 0;
        for (int bit = 0; bit < 8; ++bit) {
          if (value & (1 << bit)) {
            a ^= basis1[byte * 8 + bit];
            b ^= basis2[byte * 8 + bit];
          }
        }
        once[byte][value] = a;
        twice[byte][value] = b;
      }
    }
  }

  static uint32_t apply(const std::array<std::array<uint32_t, 256>, 4>& t, uint32_t s) {
    return t[0][s & 0xff] ^ t[1][(s >> 8) & 0xff] ^ t[2][(s >> 16) & 0xff] ^ t[3][s >> 24];
  }
};

const ShiftTables& shift_tables() {
  static const ShiftTables tables;
  return tables;
}

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t state = ~crc;
  if (len >= 3 * kLaneBytes) {
    const ShiftTables& t = shift_tables();
    while (len >= 3 * kLaneBytes) {
      uint64_t a = state, b = 0, c = 0;
      const uint8_t* pa = p;
      const uint8_t* pb = p + kLaneBytes;
      const uint8_t* pc = p + 2 * kLaneBytes;
      for (size_t i = 0; i < kLaneBytes; i += 8) {
        uint64_t wa, wb, wc;
        std::memcpy(&wa, pa + i, 8);
        std::memcpy(&wb, pb + i, 8);
        std::memcpy(&wc, pc + i, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
      }
      state = ShiftTables::apply(t.twice, static_cast<uint32_t>(a)) ^
              ShiftTables::apply(t.once, static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
      p += 3 * kLaneBytes;
      len -= 3 * kLaneBytes;
    }
  }
  return ~crc_stream(state, p, len);
}

}  // namespace dualkv
