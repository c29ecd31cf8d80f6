# Compiles cluster.py's state as a C-backed class: the event loop reads these arrays on every
# event; typed as memoryviews, each read or update is a C array access.
cimport cython
from dualkv.sched.cost cimport FlopCurve as CFlopCurve

cdef class NodeSet  # below; Cluster.block uses it


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class Cluster:
    cdef public object policy
    cdef public CFlopCurve curve
    cdef public Py_ssize_t num_pe_nodes, num_de_nodes, g, num_nodes
    cdef public list pe_groups, de_groups, snic_pending, batchers, ready, de_wait
    cdef public long long[:] seq, tok, node_tok, read_q, buf_used, de_assigned, de_alloc, de_waiting
    cdef public signed char[:] snic_busy, pe_busy
    cdef public double[:] h2d_free
    cdef public long long buf_cap, de_cap
    cdef public list blocked

    @cython.locals(used=cython.longlong)
    cpdef bint buffer_fits(self, Py_ssize_t node, long long tokens) except -1

    @cython.locals(waiting=NodeSet)
    cpdef block(self, Py_ssize_t buffer_node, Py_ssize_t read_node)


@cython.final
cdef class NodeSet:
    cdef public signed char[:] flags
    cdef public Py_ssize_t size, lo, hi

    cpdef bint contains(self, Py_ssize_t i) except -1
    cpdef add(self, Py_ssize_t i)
    cpdef discard(self, Py_ssize_t i)
    @cython.locals(members=list, i=Py_ssize_t, k=Py_ssize_t)
    cpdef list take(self, long long shift)
