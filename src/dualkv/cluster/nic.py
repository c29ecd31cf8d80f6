"""Emulated storage NIC of a node: the scarce resource of the paper's setting, on one machine.

Each engine process is a node with one storage NIC of `rate_bytes_per_s`. A read of n bytes
queues behind the node's earlier reads (FIFO) and its data counts as arrived only at
`ready_at` — the block bytes themselves are read for real right away (they must be correct),
but the prefill that needs them waits until the emulated NIC would have delivered them.
CLOCK_MONOTONIC is shared by all processes of a machine, so a DE's ready_at is valid on the PE.
"""
from __future__ import annotations

import threading
import time

from dualkv.errors import InvalidArgument, TimedOut


class SnicQueue:
    def __init__(self, rate_bytes_per_s: float = 0.0):
        if rate_bytes_per_s < 0:
            raise InvalidArgument(f"NIC rate must be >= 0 (0 = unlimited), got {rate_bytes_per_s}")
        self.rate = rate_bytes_per_s
        self.free_at = 0.0
        self.num_bytes = 0
        self._lock = threading.Lock()

    def reserve(self, num_bytes: int) -> float:
        """Queues a read; returns the monotonic time its last byte arrives."""
        with self._lock:
            self.num_bytes += num_bytes
            now = time.monotonic()
            if not self.rate:
                return now
            self.free_at = max(now, self.free_at) + num_bytes / self.rate
            return self.free_at


    def backlog_bytes(self) -> float:
        """Bytes queued and not yet delivered: this node's read queue."""
        with self._lock:
            return max(0.0, self.free_at - time.monotonic()) * self.rate


CHECK_PERIOD_S = 0.05  # how often a wait for an emulated read checks that its peers live


class ArrivesAt:
    """A KVSource whose hit counts as read only at `ready_at` (its node's emulated NIC).

    `check()`, called while waiting, raises if a process the data depends on died (the DE
    reading and streaming a de-side hit, the DEs the prefill writes to): its read would never
    have ended, so the wait fails at once instead of at `ready_at`."""

    def __init__(self, source, ready_at: float, check=None):
        self.source, self.ready_at, self.check = source, ready_at, check

    def prepare(self, deadline: float) -> int:
        if self.ready_at > deadline:
            raise TimedOut(f"emulated storage read ends {self.ready_at - time.monotonic():.3f} s "
                           "past the deadline")
        while (left := self.ready_at - time.monotonic()) > 0:
            if self.check is not None:
                self.check()
            time.sleep(min(left, CHECK_PERIOD_S))
        if self.check is not None:
            self.check()
        return self.source.prepare(deadline)

    def wait_layer(self, layer: int, deadline: float):
        return self.source.wait_layer(layer, deadline)

    def release_layer(self, layer: int) -> None:
        self.source.release_layer(layer)

    def close(self) -> None:
        self.source.close()
