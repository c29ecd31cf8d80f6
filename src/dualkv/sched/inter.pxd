# Compiles inter.py's Scheduler as a C-backed class: its fields are read on every submit and
# fetch, and the simulator calls has_pe_work / has_de_work for many groups per tick.
cimport cython
from dualkv.sched.request cimport EngineReport, FetchResult, GroupReport, Request, is_side
# the selection rules as C calls (inter.py imports the same names; compiled, these bind them)
from dualkv.sched.select cimport LeastLoaded, assign_des, assign_pes, shorter_queue_side


cpdef FetchResult _cleared(FetchResult result)


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class Scheduler:
    cdef public object config, policy
    cdef public bint _smart, _io_free, _side_pe, _side_rr, _side_split
    cdef public object _side
    cdef public double _alpha, _beta, _z
    cdef public long long _split_block
    cdef public dict pe_groups, de_groups, read_q, de_private, _pe_node, _de_node
    cdef public list _private_at
    cdef public long long[:] _private_tokens
    cdef public dict _pending_pe, _pending_de
    cdef public object pe_queue, de_queue
    cdef public LeastLoaded de_loads
    cdef public list _rr_pe, _rr_de, _rr_counts

    cpdef submit(self, request)
    cpdef bint has_pe_work(self, group_id) except -1
    cpdef bint has_de_work(self, group_id) except -1
    cpdef report_read_q(self, node_id, read_q)

    @cython.locals(e=EngineReport, reported=cython.longlong)
    cpdef report_de_load(self, GroupReport report)
    @cython.locals(pos=Py_ssize_t)
    cpdef report_de_tokens(self, group_id, read_q, long long tokens)

    @cython.locals(e=EngineReport, reported=cython.longlong, request=Request, result=FetchResult,
                   loads=LeastLoaded, own_at=Py_ssize_t, at=Py_ssize_t,
                   i=Py_ssize_t)
    cpdef fetch_for_de_group(self, GroupReport report, FetchResult into=*)

    @cython.locals(request=Request, result=FetchResult, i=Py_ssize_t)
    cpdef fetch_for_pe_group(self, GroupReport report, FetchResult into=*)

    cdef _finish(self, Request request, FetchResult result)
    cpdef choose_read_side(self, Request request)
    cdef _read_side(self, Request request)
