"""The emulated storage NIC: reads queue FIFO at the set rate; a hit is not served before its
bytes would have arrived; unlimited means now."""
import time

import pytest

from dualkv.cluster.nic import ArrivesAt, SnicQueue
from dualkv.errors import InvalidArgument, TimedOut


class ReadySource:
    def __init__(self):
        self.prepared_at = None

    def prepare(self, deadline):
        self.prepared_at = time.monotonic()
        return 64

    def close(self):
        pass


def test_reads_queue_fifo_at_the_rate():
    nic = SnicQueue(1e6)
    start = time.monotonic()
    first, second = nic.reserve(100_000), nic.reserve(300_000)
    assert first - start == pytest.approx(0.1, abs=0.05)
    assert second - first == pytest.approx(0.3, abs=1e-6)
    assert nic.num_bytes == 400_000


def test_unlimited_is_immediate_and_bad_rate_raises():
    assert SnicQueue(0).reserve(10**9) <= time.monotonic()
    with pytest.raises(InvalidArgument):
        SnicQueue(-1)


def test_source_waits_for_its_bytes_and_respects_the_deadline():
    inner = ReadySource()
    ready_at = time.monotonic() + 0.2
    assert ArrivesAt(inner, ready_at).prepare(time.monotonic() + 5) == 64
    assert inner.prepared_at >= ready_at
    with pytest.raises(TimedOut):
        ArrivesAt(ReadySource(), time.monotonic() + 10).prepare(time.monotonic() + 0.1)

