"""Block-key chains against independent hashlib computations and SGLang's page-key algorithm."""
import hashlib
import struct

import numpy as np
import pytest

from dualkv.store import keys
from dualkv._native import C
from dualkv.errors import InvalidArgument


def reference_chain(tokens, block_tokens, prior=b""):
    """key_i = SHA-256(key_{i-1} || block i as little-endian uint32), written from the spec."""
    out, previous = [], prior
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        ids = (int(t) for t in tokens[start:start + block_tokens])
        block = struct.pack(f"<{block_tokens}i", *ids)
        previous = hashlib.sha256(previous + block).digest()
        out.append(previous)
    return out


def sglang_get_hash_str(token_ids, prior_hash=None, page_size=None):
    """SGLang 0.5.23 get_hash_str for uint32 token ids, re-implemented from its source:
    prior digest = bytes.fromhex(prior_hash) if prior_hash else none; each page (the last one
    may be partial) is SHA256(prior digest || page as native-endian uint32) and chains."""
    prior = bytes.fromhex(prior_hash) if prior_hash else None
    step = page_size or len(token_ids)
    hashes = []
    for start in range(0, len(token_ids), step):
        h = hashlib.sha256()
        if prior is not None:
            h.update(prior)
        h.update(np.asarray(token_ids[start:start + step], dtype="<u4").tobytes())
        prior = h.digest()
        hashes.append(h.hexdigest())
    return hashes if page_size else hashes[0]


@pytest.mark.parametrize("block_tokens", [1, 16, 64])
@pytest.mark.parametrize("with_prior", [False, True])
def test_chain_equals_hashlib_reference(block_tokens, with_prior):
    rng = np.random.default_rng(block_tokens)
    tokens = rng.integers(-(2**31), 2**31, 10 * block_tokens + 3, dtype=np.int64).astype(np.int32)
    prior = rng.bytes(32) if with_prior else None
    got = keys.chain_keys(tokens, block_tokens, prior=prior)
    assert got.shape == (len(tokens) // block_tokens, 32)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    assert [bytes(k) for k in got] == reference_chain(tokens, block_tokens, prior or b"")


def test_chain_equals_sglang_page_keys():
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 150_000, 64 * 12, dtype=np.int32)
    ours = keys.to_hex(keys.chain_keys(tokens, 64))
    assert ours == sglang_get_hash_str(tokens.tolist(), None, page_size=64)
    # A hex prior_hash in SGLang is prior=bytes.fromhex(...) here, and the hex string works too.
    tail = rng.integers(0, 150_000, 64 * 3, dtype=np.int32)
    expected = sglang_get_hash_str(tail.tolist(), ours[-1], page_size=64)
    assert keys.to_hex(keys.chain_keys(tail, 64, prior=bytes.fromhex(ours[-1]))) == expected
    assert keys.to_hex(keys.chain_keys(tail, 64, prior=ours[-1])) == expected
    # Continuing a chain from its last key equals hashing the whole prompt at once.
    whole = keys.chain_keys(np.concatenate([tokens, tail]), 64)
    assert keys.to_hex(whole[12:]) == expected
    # SGLang's empty prior_hash means no prior, as does ours.
    assert keys.to_hex(keys.chain_keys(tokens[:64], 64, prior="")) == [
        sglang_get_hash_str(tokens[:64].tolist(), "")]


def test_only_full_blocks_get_keys_and_prefixes_agree():
    tokens = np.arange(1000, dtype=np.int32)
    full = keys.chain_keys(tokens, 64)
    assert full.shape == (15, 32)
    assert np.array_equal(keys.chain_keys(tokens[:640], 64), full[:10])
    assert keys.chain_keys(tokens[:63], 64).shape == (0, 32)
    assert keys.chain_keys([], 64).shape == (0, 32)


def test_other_integer_inputs_hash_like_int32():
    tokens = np.arange(256, dtype=np.int32) * 1000
    expected = keys.chain_keys(tokens, 64)
    assert np.array_equal(keys.chain_keys(tokens.astype(np.int64), 64), expected)
    assert np.array_equal(keys.chain_keys(tokens.astype(np.uint32), 64), expected)
    assert np.array_equal(keys.chain_keys(tokens.tolist(), 64), expected)
    assert np.array_equal(keys.chain_keys(tokens[::-1][::-1], 64), expected)


def test_native_and_fallback_agree():
    if getattr(C, "chain_keys", None) is None:
        pytest.skip("built without libcrypto")
    assert C.build_info["crypto"] is True
    tokens = np.random.default_rng(3).integers(0, 2**31, 64 * 33, dtype=np.int32)
    prior = bytes(range(32))
    assert np.array_equal(C.chain_keys(tokens, 64, prior),
                          keys.chain_keys_hashlib(tokens, 64, prior))


@pytest.mark.parametrize("tokens", [
    np.array([2**31], dtype=np.int64),
    np.array([-(2**31) - 1], dtype=np.int64),
    np.array([2**32 - 1], dtype=np.uint32),
    np.array([1.0, 2.0]),
    np.array([True, False]),
    np.zeros((2, 64), dtype=np.int32),
    [2**70],
    ["a", "b"],
])
def test_tokens_not_int32_are_rejected(tokens):
    with pytest.raises(InvalidArgument):
        keys.chain_keys(tokens, 1)


@pytest.mark.parametrize("block_tokens", [0, -64, 1.5, None, True])
def test_bad_block_tokens(block_tokens):
    with pytest.raises(InvalidArgument):
        keys.chain_keys(np.arange(64, dtype=np.int32), block_tokens)


@pytest.mark.parametrize("prior", [b"x" * 31, b"x" * 33, "zz" * 32, "ab" * 16, 5, np.zeros(32)])
def test_bad_prior(prior):
    with pytest.raises(InvalidArgument):
        keys.chain_keys(np.arange(64, dtype=np.int32), 64, prior=prior)


def test_as_keys_round_trips_hex_bytes_and_arrays():
    k = keys.chain_keys(np.arange(640, dtype=np.int32), 64)
    assert np.array_equal(keys.as_keys(keys.to_hex(k)), k)
    assert np.array_equal(keys.as_keys([bytes(row) for row in k]), k)
    assert np.array_equal(keys.as_keys(list(k)), k)
    assert keys.as_keys(k) is k
    assert keys.as_keys(k[:, :16], key_bytes=16).flags.c_contiguous
    assert keys.as_keys([], key_bytes=20).shape == (0, 20)


@pytest.mark.parametrize("bad", [
    np.zeros((3, 31), dtype=np.uint8),
    np.zeros((3, 32), dtype=np.int64),
    np.zeros(32, dtype=np.uint8),
    [b"x" * 31],
    ["ab" * 31],
    ["not hex" * 10],
    [12345],
    b"x" * 32,
    "ab" * 32,
])
def test_as_keys_rejects_wrong_keys(bad):
    with pytest.raises(InvalidArgument):
        keys.as_keys(bad)


def test_hashlib_fallback_without_libcrypto(monkeypatch):
    tokens = np.arange(64 * 5, dtype=np.int32)
    expected = keys.chain_keys(tokens, 64, prior=b"p" * 32)
    monkeypatch.setattr(keys, "_native_chain", None)  # as in a build without libcrypto
    assert np.array_equal(keys.chain_keys(tokens, 64, prior=b"p" * 32), expected)
    assert [bytes(k) for k in expected] == reference_chain(tokens, 64, b"p" * 32)
