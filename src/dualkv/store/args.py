"""Checking of the BlockStore batch arguments: anything the native side cannot take exactly is
refused here with InvalidArgument, before any I/O starts."""
from __future__ import annotations

import numpy as np

from dualkv.errors import InvalidArgument
from dualkv.store.keys import as_keys


def int64_array(values, shape: tuple, what: str) -> np.ndarray:
    """Integers of exactly `shape` as a C-contiguous int64 array (slot ids, addresses)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" or arr.shape != shape:  # floats, bools, strings refused
        raise InvalidArgument(f"{what} must be integers of shape {shape}, got {arr.dtype} "
                              f"{arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidArgument(f"{what} has values beyond int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def layer_range(layers, num_layers: int) -> tuple[int, int]:
    """None (every layer), (first, last) or range(first, last) -> (first, last). A range with
    a step other than 1 (range(0, 4, 2) is not layers 0..3) and a bound that is not an integer
    are refused, never rounded."""
    if layers is None:
        return 0, num_layers
    if isinstance(layers, range):
        if layers.step != 1:
            raise InvalidArgument(f"layers must be contiguous, got {layers!r} (step {layers.step})")
        layers = (layers.start, layers.stop)
    try:
        first, last = layers
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"layers must be None or (first, last), got {layers!r}") from exc
    if not all(is_integer(x) for x in (first, last)):
        raise InvalidArgument(f"layers must be integer bounds, got {layers!r}")
    first, last = int(first), int(last)
    if not 0 <= first < last <= num_layers:
        raise InvalidArgument(f"layers [{first}, {last}) outside 0..{num_layers}")
    return first, last


def is_integer(x) -> bool:
    """An int or numpy integer, not a bool (True is not layer or slot 1)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def parent_key(parent, key_bytes: int) -> bytes | None:
    """The key before a chain: bytes, a hex string or a 1-D uint8 array; None for a root."""
    if parent is None:
        return None
    if isinstance(parent, np.ndarray) and parent.ndim == 2:
        if len(parent) != 1:
            raise InvalidArgument("parent must be one key")
        return as_keys(parent, key_bytes)[0].tobytes()
    return as_keys([parent], key_bytes)[0].tobytes()
