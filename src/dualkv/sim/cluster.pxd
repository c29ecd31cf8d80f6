# Compiles cluster.py's state as a C-backed class: the event loop reads these lists on every
# event, and typed fields make each read a struct access instead of a dict lookup.
cdef class Cluster:
    cdef public object policy, curve
    cdef public Py_ssize_t num_pe_nodes, num_de_nodes, g, num_nodes
    cdef public list pe_groups, de_groups, seq, tok, read_q, snic_pending, snic_busy, buf_used
    cdef public long long buf_cap, de_cap
    cdef public dict blocked
    cdef public list batchers, ready, pe_busy, de_assigned, de_alloc, de_wait, h2d_free

    cpdef bint buffer_fits(self, Py_ssize_t node, long long tokens) except -1
