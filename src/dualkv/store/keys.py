"""Block keys: chained SHA-256 digests of token blocks, the same as SGLang HiCache's page keys.

    key_i = SHA-256(key_{i-1} || tokens of block i, each as a 4-byte little-endian integer)
    key_{-1} = `prior` (32 bytes) or nothing at all (not 32 zero bytes)

Only full blocks get keys. How this maps onto SGLang 0.5.23 (`sglang/srt/mem_cache/utils.py`
`get_hash_str(token_ids, prior_hash=None, page_size=None)`, which calls the libcrypto extension
`mem_cache/cpp_utils/hash_binding.cpp`):

- SGLang hashes a page as SHA256(prior_digest || page tokens as uint32 in host byte order) and
  only runs on little-endian Linux, so a page's bytes are exactly ours: each token id as 4
  little-endian bytes, no length prefix, no separator. Its page key is the lowercase hex string
  of the digest: `keys[i].tobytes().hex()` (`to_hex(keys)`), and `as_keys(hex_strings)` goes
  back.
- Its prior is a hex string: `prior_digest = bytes.fromhex(prior_hash) if prior_hash else
  None`. None or "" hashes the first page with no prefix; ours is the same with prior=None
  (b"" and "" are accepted as None too). A hex prior_hash corresponds to
  `prior=bytes.fromhex(prior_hash)`; `prior` here also takes that 64-character hex string.
- With page_size, SGLang returns one key per page and chains them; it also keys a trailing
  partial page, which we never do (HiCache's storage path only hashes page-aligned tokens).
- SGLang rejects token ids outside [0, 2^32) (and hashes ids >= 2^32 in a different "wide"
  encoding); dualkv takes int32 tokens as the store contract says, so ids in [0, 2^31) name
  the same block in both. A negative int32 hashes as its two's-complement 4 bytes (SGLang
  raises for it).
- SGLang seeds chains of requests with an `extra_key` / `cache_salt` via
  `get_storage_hash_str` (a namespace digest passed as prior_hash). dualkv keeps its namespace
  beside the key instead; an engine that uses SGLang's seeds passes that digest as `prior`.

The chain runs in C++ on OpenSSL's libcrypto (SHA-NI) in one call per prompt with the GIL
released; builds without libcrypto (`dualkv._C.build_info["crypto"]` is False) use hashlib.
"""
from __future__ import annotations

import hashlib

import numpy as np

from dualkv._native import C
from dualkv.errors import InvalidArgument

KEY_BYTES = 32
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_native_chain = getattr(C, "chain_keys", None)


def chain_keys(tokens, block_tokens: int, prior=None) -> np.ndarray:
    """(len(tokens) // block_tokens, 32) uint8 chained SHA-256 keys of the full blocks."""
    tokens = _as_tokens(tokens)
    block_tokens = _as_block_tokens(block_tokens)
    prior = _as_prior(prior)
    if _native_chain is not None:
        return _native_chain(tokens, block_tokens, prior)
    return chain_keys_hashlib(tokens, block_tokens, prior)


def chain_keys_hashlib(tokens: np.ndarray, block_tokens: int, prior: bytes | None) -> np.ndarray:
    """The same chain in pure Python: the fallback, and the bench's reference."""
    num_blocks = len(tokens) // block_tokens
    data = memoryview(tokens[: num_blocks * block_tokens].astype("<i4", copy=False).tobytes())
    stride = block_tokens * 4
    digests, previous = [], prior or b""
    for start in range(0, num_blocks * stride, stride):
        h = hashlib.sha256(previous)
        h.update(data[start:start + stride])
        previous = h.digest()
        digests.append(previous)
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(num_blocks, KEY_BYTES).copy()


def as_keys(x, key_bytes: int = KEY_BYTES) -> np.ndarray:
    """(n, key_bytes) C-contiguous uint8 keys from such an array, or a list of bytes-like keys
    or hex strings (SGLang page keys). Raises InvalidArgument for anything of the wrong length."""
    if not isinstance(key_bytes, (int, np.integer)) or key_bytes < 1:
        raise InvalidArgument(f"key_bytes must be a positive int, got {key_bytes!r}")
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != key_bytes:
            raise InvalidArgument(
                f"keys must be a (n, {key_bytes}) uint8 array, got {x.dtype} {x.shape}")
        return np.ascontiguousarray(x)
    if isinstance(x, (bytes, bytearray, str)) or not hasattr(x, "__len__"):
        raise InvalidArgument(f"keys must be an array or a list of keys, got {type(x).__name__}")
    out = np.empty((len(x), key_bytes), dtype=np.uint8)
    for i, key in enumerate(x):
        out[i] = _one_key(key, key_bytes, i)
    return out


def to_hex(keys) -> list[str]:
    """SGLang page keys (lowercase hex) of an (n, k) key array."""
    keys = np.ascontiguousarray(keys)
    if keys.dtype != np.uint8 or keys.ndim != 2:
        raise InvalidArgument(f"keys must be a (n, k) uint8 array, got {keys.dtype} {keys.shape}")
    width = keys.shape[1] * 2
    text = keys.tobytes().hex()
    return [text[i:i + width] for i in range(0, len(text), width)]


def _one_key(key, key_bytes: int, what) -> np.ndarray:
    """One key from bytes, a hex string or a 1-D uint8 array; `what` names it in errors."""
    name = what if isinstance(what, str) else f"key {what}"
    if isinstance(key, str):
        try:
            raw = bytes.fromhex(key)
        except ValueError as exc:
            raise InvalidArgument(f"{name} is not a hex string: {key!r}") from exc
    elif isinstance(key, np.ndarray):
        raw = key.tobytes() if key.dtype == np.uint8 and key.ndim == 1 else None
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raw = None
    if raw is None:
        raise InvalidArgument(f"{name} must be bytes, a hex string or a 1-D uint8 array, "
                              f"got {type(key).__name__}")
    if len(raw) != key_bytes:
        raise InvalidArgument(f"{name} has {len(raw)} bytes, expected {key_bytes}")
    return np.frombuffer(raw, dtype=np.uint8)


def _as_tokens(tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise InvalidArgument(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.int32:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise InvalidArgument(f"tokens must be integers representable as int32, got {arr.dtype}")
    if int(arr.min()) < _INT32_MIN or int(arr.max()) > _INT32_MAX:
        raise InvalidArgument("tokens must be representable as int32 "
                              f"(range {int(arr.min())}..{int(arr.max())})")
    return arr.astype(np.int32)


def _as_block_tokens(block_tokens) -> int:
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, (int, np.integer)) \
            or block_tokens < 1:
        raise InvalidArgument(f"block_tokens must be a positive int, got {block_tokens!r}")
    return int(block_tokens)


def _as_prior(prior) -> bytes | None:
    """The digest the chain continues from: None (or empty, as SGLang's "") for none."""
    if prior is None or (isinstance(prior, (bytes, str)) and len(prior) == 0):
        return None
    return _one_key(prior, KEY_BYTES, "prior").tobytes()
