"""What every system's backend in `transfer_peer_worker` shares: the region (anonymous mmap
memory, the same kind for every system), the prepared-post shape, and a byte-safe encoding of
connection info for the JSON-line channel.

A backend (one class `Backend(role, region_bytes, tls)` per system) provides:
  local_info() -> dict        connect(info)               close()
  prepare(local_offsets, remote_offsets, size) -> Post     (a batch posted again and again)
  prepare_layers(local_offsets, remote_offsets, size, request) -> [Post]  (notice per layer)
  wait(handle, timeout)
  target side: expect_layers(request, n), wait_layers(request, n, timeout) -> the monotonic
  time at which the last of the n layer notices was seen."""
from __future__ import annotations

import base64
import ctypes
import mmap
import pickle
import time

import numpy as np


class Post:
    """One prepared transfer: calling it posts it once and returns what wait() takes."""

    def __init__(self, fn, num_descs: int, num_bytes: int):
        self.fn, self.num_descs, self.num_bytes = fn, num_descs, num_bytes

    def __call__(self):
        return self.fn()


class MmapRegion:
    """`size` bytes of anonymous, pre-faulted mmap memory filled with a pattern."""

    def __init__(self, size: int, fill: int):
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.array = np.frombuffer(self.map, np.uint8)
        self.array[:] = fill
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.size = size

    def close(self):
        del self.array
        try:
            self.map.close()
        except BufferError:  # a library still holds a view; the process is ending anyway
            pass


def encode(obj) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


def decode(text: str):
    return pickle.loads(base64.b64decode(text))  # from our own child process only


def poll_until(check, timeout: float, what: str):
    """Busy-polls check() (truthy ends it) until the deadline, as these libraries' own
    notification APIs are polled; TimeoutError names what never came."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not arrive within {timeout} s")
