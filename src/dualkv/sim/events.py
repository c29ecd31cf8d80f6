"""The simulator's event queue: (time, kind, payload) events popped in time order, FIFO among
equal times (a sequence number breaks ties), so a run is deterministic.

events.pyx is the compiled twin with the same API and order (a binary heap of C structs):
the loop pushes and pops ~6 events per simulated turn. This module runs where it is not built.
"""
import heapq


class EventQueue:
    __slots__ = ("_heap", "_seq", "last_t", "last_kind")

    def __init__(self):
        self._heap = []
        self._seq = 0
        self.last_t, self.last_kind = 0.0, 0  # of the event pop_payload popped last

    def push(self, t: float, kind: int, obj) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj))

    def pop(self) -> tuple:
        """(t, kind, obj) of the earliest event; IndexError when empty."""
        t, _, kind, obj = heapq.heappop(self._heap)
        return t, kind, obj

    def pop_payload(self):
        """pop() for the event loop: returns the payload and leaves the time and kind in
        `last_t` and `last_kind` (compiled, no tuple and no boxed time per event)."""
        self.last_t, self.last_kind, obj = self.pop()
        return obj

    def __len__(self) -> int:
        return len(self._heap)


def prefetch_items(items: list) -> None:
    """A hint that the objects in `items` are about to be read: compiled (events.pyx), it
    asks the CPU to load each one's first two cache lines at once, without touching them.
    Changes nothing; here it does nothing."""


def prefetch_int32(values, i: int) -> None:
    """A hint that values[i] (an int32 array) is about to be read: compiled (events.pyx), its
    cache line is requested now. Changes nothing; here it does nothing."""
