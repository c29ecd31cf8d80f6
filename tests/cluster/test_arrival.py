"""A hit is not served before its bytes would have arrived through the emulated storage NIC
(the queueing itself is the token bucket's, tests/transfer/test_traffic.py), and a wait ends
as soon as a peer it depends on dies."""
import time

import pytest

from dualkv.cluster.arrival import ArrivesAt
from dualkv.errors import TimedOut


class ReadySource:
    def __init__(self):
        self.prepared_at = None

    def prepare(self, deadline):
        self.prepared_at = time.monotonic()
        return 64

    def close(self):
        pass


def test_source_waits_for_its_bytes_and_respects_the_deadline():
    inner = ReadySource()
    ready_at = time.monotonic() + 0.2
    assert ArrivesAt(inner, ready_at).prepare(time.monotonic() + 5) == 64
    assert inner.prepared_at >= ready_at
    with pytest.raises(TimedOut):
        ArrivesAt(ReadySource(), time.monotonic() + 10).prepare(time.monotonic() + 0.1)


def test_wait_for_a_read_fails_as_soon_as_its_check_does():
    """A DE that dies while the PE waits for its emulated read: the wait ends with the
    check's error within a check period, not at ready_at; a passing check changes nothing."""
    from dualkv.errors import PeerDisconnected

    start = time.monotonic()
    dies_at = start + 0.15

    def check():
        if time.monotonic() >= dies_at:
            raise PeerDisconnected("the DE is gone")

    inner = ReadySource()
    with pytest.raises(PeerDisconnected, match="the DE is gone"):
        ArrivesAt(inner, start + 5.0, check).prepare(start + 10.0)
    assert time.monotonic() - start < 0.5 and inner.prepared_at is None
    calls = []
    ok = ArrivesAt(inner, time.monotonic() + 0.12, lambda: calls.append(1))
    assert ok.prepare(time.monotonic() + 10.0) == 64 and len(calls) >= 2
