# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of events.py: the same API and the same pop order ((t, push order)), with the
heap held as C structs so a push or pop allocates nothing (pop_payload) or only the popped
tuple (pop). The heap is 4-ary: half the levels of a binary heap, and a node's four children
share two cache lines, which matters at ~50,000 pending events (48,000 agents). Keys are
unique (push order breaks ties), so any correct heap pops the same sequence as heapq."""
from cpython.list cimport PyList_GET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject


cdef extern from *:
    void __builtin_prefetch(const void* addr) nogil  # gcc and clang; a hint, never a fault


# The order: a before b when a.t < b.t, or a.t == b.t and a.seq < b.seq (push order). It is
# written out where it is used: gcc kept an inline helper an out-of-line call.


cdef class EventQueue:
    def __cinit__(self):
        self._heap = NULL
        self._size = self._cap = 0
        self._seq = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._size):
            Py_DECREF(<object>self._heap[i].obj)
        PyMem_Free(self._heap)

    cpdef push(self, double t, int kind, obj):
        cdef Py_ssize_t i, parent
        cdef Event ev
        cdef Event* grown
        if self._size == self._cap:
            self._cap = max(64, 2 * self._cap)
            grown = <Event*>PyMem_Realloc(self._heap, self._cap * sizeof(Event))
            if grown == NULL:
                raise MemoryError()
            self._heap = grown
        self._seq += 1
        ev.t, ev.seq, ev.kind, ev.obj = t, self._seq, kind, <PyObject*>obj
        Py_INCREF(obj)
        i = self._size
        self._size += 1
        while i > 0:  # sift up
            parent = (i - 1) >> 2
            if not (t < self._heap[parent].t or (t == self._heap[parent].t and ev.seq < self._heap[parent].seq)):
                break
            self._heap[i] = self._heap[parent]
            i = parent
        self._heap[i] = ev

    cdef Event _pop(self) except *:
        """The earliest event, removed from the heap; its obj reference is the caller's."""
        cdef Event top, last
        cdef Py_ssize_t i, child, n, j, end, best
        cdef Event* heap = self._heap
        if self._size == 0:
            raise IndexError("pop from an empty event queue")
        top = heap[0]
        self._size -= 1
        n = self._size
        if n > 0:
            last = heap[n]
            i = 0
            while True:  # sift the last event down from the root
                child = 4 * i + 1
                if child >= n:
                    break
                best = child  # the earliest of up to four children
                end = min(child + 4, n)
                for j in range(child + 1, end):
                    if heap[j].t < heap[best].t or (heap[j].t == heap[best].t and heap[j].seq < heap[best].seq):
                        best = j
                if not (heap[best].t < last.t or (heap[best].t == last.t and heap[best].seq < last.seq)):
                    break
                heap[i] = heap[best]
                i = best
            heap[i] = last
            # The next event's payload (a Request, mostly) is read when that event is handled,
            # one handler from now; at 48,000 agents it has usually left the cache since it was
            # pushed. Fetching its first two cache lines now overlaps that miss with this
            # event's handler. It changes nothing but timing.
            __builtin_prefetch(heap[0].obj)
            __builtin_prefetch((<char*>heap[0].obj) + 64)
        return top

    cpdef tuple pop(self):
        cdef Event top = self._pop()
        obj = <object>top.obj  # a new reference ...
        Py_DECREF(obj)  # ... and the queue's own is dropped
        return (top.t, top.kind, obj)

    cpdef object pop_payload(self):
        """pop() for the event loop: the payload; the time and kind are left in last_t and
        last_kind, so no tuple and no boxed time are made per event."""
        cdef Event top = self._pop()
        self.last_t, self.last_kind = top.t, top.kind
        obj = <object>top.obj
        Py_DECREF(obj)
        return obj

    def __len__(self):
        return self._size


cpdef void prefetch_items(list items) noexcept:
    """A hint that the objects in `items` are about to be read: each one's first two cache
    lines are requested at once, so their misses overlap (reading them one by one waits for
    each in turn). Nothing is read or changed; None or an empty list does nothing."""
    cdef Py_ssize_t i
    cdef char* p
    if items is None:
        return
    for i in range(len(items)):
        p = <char*>PyList_GET_ITEM(items, i)
        __builtin_prefetch(p)
        __builtin_prefetch(p + 64)


cpdef void prefetch_int32(const int[:] values, Py_ssize_t i) noexcept:
    """A hint that values[i] is about to be read: its cache line is requested now, so the miss
    overlaps with the caller's work until then. Nothing is read or changed; an index out of
    range prefetches nothing useful and does no harm (a prefetch never faults)."""
    if 0 <= i < values.shape[0]:
        __builtin_prefetch(&values[i])
