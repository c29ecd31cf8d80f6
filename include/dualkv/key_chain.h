// Block-key chains: key_i = SHA-256(key_{i-1} || tokens of block i as little-endian uint32).
// This is SGLang HiCache's page-key chain (see src/dualkv/keys.py for the exact mapping).
#pragma once

#include <cstddef>
#include <cstdint>

#include "dualkv/status.h"

namespace dualkv {

constexpr size_t kChainKeyBytes = 32;

// Writes num_tokens / block_tokens keys of 32 bytes to out (only full blocks get keys).
// prior is 32 bytes or nullptr (then key_0 hashes the tokens alone). Needs libcrypto; the
// binding registers it only when the build found it (DUALKV_HAVE_CRYPTO).
Status chain_keys_sha256(const int32_t* tokens, size_t num_tokens, size_t block_tokens,
                         const uint8_t* prior, uint8_t* out);

}  // namespace dualkv
