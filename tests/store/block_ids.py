"""Test blocks named by small integers: a 32-byte key and a reproducible payload per id."""
import numpy as np


def key_of(i: int) -> np.ndarray:
    return np.frombuffer(i.to_bytes(4, "little") * 8, dtype=np.uint8).reshape(1, 32)


def keys_of(ids) -> np.ndarray:
    return np.concatenate([key_of(i) for i in ids])


def content_of(i: int, layout) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, layout.full_block_bytes, dtype=np.uint8)
