"""A hit that counts as read only when its node's emulated storage NIC would have delivered it.

The block bytes themselves are read for real right away (they must be correct); the node's
TrafficManager charges them to its storage-NIC token bucket (`read_through_snic` in
engine_proc.py), which returns when the last byte would have arrived, queued behind the node's
earlier reads. The prefill that needs them waits until then. CLOCK_MONOTONIC is shared by all
processes of a machine, so a DE's arrival time is valid on the PE.
"""
from __future__ import annotations

import time

from dualkv.errors import TimedOut

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
