from cpython.ref cimport PyObject


cdef struct Event:
    double t
    long long seq  # push order: breaks ties in t, FIFO
    int kind
    PyObject* obj  # owned reference


cdef class EventQueue:
    cdef Event* _heap
    cdef Py_ssize_t _size, _cap
    cdef long long _seq
    cdef public double last_t
    cdef public int last_kind

    cpdef push(self, double t, int kind, obj)
    cdef Event _pop(self) except *
    cpdef tuple pop(self)
    cpdef object pop_payload(self)


cpdef void prefetch_items(list items) noexcept
cpdef void prefetch_int32(const int[:] values, Py_ssize_t i) noexcept
