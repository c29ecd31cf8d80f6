// SHA-256 block-key chains on OpenSSL's libcrypto, which uses the CPU's SHA extensions
// (SHA-NI) where present. Built only when pkg-config finds libcrypto (setup.py, tag _crypto).
//
// The low-level SHA256_* calls are deprecated in OpenSSL 3 but remain the fastest way to hash
// many small messages: EVP adds a provider dispatch per call, which at ~300 bytes a block is a
// measurable share of the 300 µs budget for a 1,024-block prompt.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <cstring>

#include "dualkv/key_chain.h"

namespace dualkv {

static_assert(SHA256_DIGEST_LENGTH == kChainKeyBytes, "a chain key is one SHA-256 digest");

Status chain_keys_sha256(const int32_t* tokens, size_t num_tokens, size_t block_tokens,
                         const uint8_t* prior, uint8_t* out) {
  if (block_tokens == 0) return make_status(Code::kInvalidArgument, "block_tokens must be >= 1");
  // Token bytes are hashed as they sit in memory: int32 on a little-endian host has exactly
  // the bytes of the same value as a little-endian uint32 (two's complement for negatives).
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "chain keys assume little-endian");
  const size_t num_blocks = num_tokens / block_tokens;
  const size_t block_bytes = block_tokens * sizeof(int32_t);
  const uint8_t* previous = prior;
  for (size_t i = 0; i < num_blocks; ++i) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    if (previous != nullptr) SHA256_Update(&ctx, previous, kChainKeyBytes);
    SHA256_Update(&ctx, tokens + i * block_tokens, block_bytes);
    uint8_t* key = out + i * kChainKeyBytes;
    SHA256_Final(key, &ctx);
    previous = key;
  }
  return Status::Ok();
}

}  // namespace dualkv
