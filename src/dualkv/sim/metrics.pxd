# Compiles metrics.py's Accounting as a C-backed class: add_read / add_class run per turn.
cimport cython


# the six channels as a C tuple: compiled callers get a struct, Python callers a tuple
ctypedef (long long, long long, long long, long long, long long, long long) Tokens

@cython.locals(full=cython.longlong)
cpdef Tokens path_tokens(side, long long hit, long long miss) except *

@cython.locals(full=cython.longlong)
cpdef Tokens split_path_tokens(long long pe_hit, long long de_hit, long long miss) except *


@cython.final
cdef class Series:
    cdef double[:] _buf
    cdef public Py_ssize_t size

    cpdef append(self, double value)
    @cython.locals(grown="double[:]")
    cpdef _grow(self)


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class Accounting:
    cdef public double window_s
    cdef public object snic, snic_write
    cdef public object cls
    cdef public Py_ssize_t num_windows, _cls_rows
    cdef double[:, ::1] _snic_view, _cls_view
    cdef double[::1] _write_view

    cpdef _grow(self, Py_ssize_t w)

    cpdef add_write(self, Py_ssize_t node, double tokens)

    @cython.locals(W=double, w0=Py_ssize_t, w1=Py_ssize_t, rate=double, w=Py_ssize_t)
    cpdef add_read(self, Py_ssize_t node, double t0, double t1, double tokens)

    @cython.locals(w=Py_ssize_t)
    cpdef add_class(self, double t, Tokens tokens)
    cpdef _grow_cls(self, Py_ssize_t w)
