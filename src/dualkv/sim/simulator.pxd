# Compiles simulator.py's event loop as a C-backed class (typed fields and locals, direct
# method calls); it runs ~6 events and ~2 scheduler fetches per simulated turn.
cimport cython
# C names differ from the .py's Python names (a .py import may not rebind a cimported name)
from dualkv.sched.request cimport Request as CRequest
from dualkv.sched.request cimport EngineReport as CEngineReport, GroupReport as CGroupReport
from dualkv.sched.request cimport FetchResult as CFetchResult
from dualkv.sched.request cimport is_side, new_request  # C calls
from dualkv.sched.inter cimport Scheduler as CScheduler
from dualkv.sched.intra cimport Chunk as CChunk, PrefillBatcher as CBatcher
from dualkv.sim.cluster cimport Cluster as CCluster, NodeSet as CNodeSet
from dualkv.sim.metrics cimport Accounting as CAccounting, path_tokens, split_path_tokens  # C calls
from dualkv.sim.metrics cimport Series as CSeries
from dualkv.sim.events cimport EventQueue as CEventQueue
from dualkv.sim.events cimport prefetch_int32, prefetch_items  # C calls


cpdef long long hbm_need(CRequest r) except? -1

cpdef Py_ssize_t read_node(CRequest r) except? -1

cpdef long long part_tokens(Py_ssize_t node, CRequest r) except? -1


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class Simulator:
    cdef public object cfg, work, progress, policy, sched_cfg
    cdef public CCluster c
    cdef public CScheduler sched
    cdef public CAccounting acct
    cdef public CEventQueue events
    cdef public long long num_ticks, num_done, _de_rotor, bpt, block
    cdef public double now, kv_bw, read_s_per_token, linear_s_per_token, tpot_slope, tpot_light
    cdef public double forward_fixed_s
    cdef public double period
    cdef public CNodeSet pe_awake, de_awake, pe_full, dirty_read_q
    cdef public bint tick_armed, io_free, layerwise, pe_wake_all, may_split
    cdef public long long[:] turn, end
    cdef public int[:] _shape
    cdef public double[:] submit_t, first_t, finish_t
    cdef public CSeries ttft, ttst, tpot, ttft_at, attn_t, attn_ratio
    cdef public list group_reports
    cdef public CFetchResult fetched
    cdef public long long bytes_read  # < 2**63: ~9e6 TB
    cdef public dict split_left
    cdef public long long num_split

    cpdef push(self, double t, int kind, obj)

    cpdef run(self, double until=*, monitor=*, double monitor_period=*)

    @cython.locals(t=double, kind=int, num_agents=Py_ssize_t, events=CEventQueue)
    cpdef _loop(self, double until, monitor)

    cpdef on_arrive(self, Py_ssize_t agent)

    @cython.locals(i=Py_ssize_t, request=CRequest, g=Py_ssize_t)
    cpdef submit(self, Py_ssize_t agent, CRequest done=*)

    cpdef arm_tick(self)

    @cython.locals(sched=CScheduler, node=Py_ssize_t, g=Py_ssize_t)
    cpdef on_tick(self, _)

    @cython.locals(c=CCluster, r=CRequest, e=Py_ssize_t, report=CGroupReport, er=CEngineReport,
                   result=CFetchResult)
    cpdef fetch_pe(self, Py_ssize_t g)

    @cython.locals(c=CCluster, r=CRequest, e=Py_ssize_t, cap=cython.longlong, report=CGroupReport,
                   er=CEngineReport, result=CFetchResult)
    cpdef fetch_de(self, Py_ssize_t g)

    @cython.locals(node=Py_ssize_t)
    cpdef place(self, CRequest r)

    @cython.locals(c=CCluster, r=CRequest, on_pe=bint, end=double)
    cpdef start_reads(self, Py_ssize_t node)

    @cython.locals(node=Py_ssize_t)
    cpdef on_read_done(self, CRequest r)

    cpdef place_split(self, CRequest r)

    @cython.locals(c=CCluster, other=Py_ssize_t)
    cpdef bint reserve_split(self, Py_ssize_t node, CRequest r) except -1

    @cython.locals(c=CCluster, tokens=cython.longlong, end=double, other=Py_ssize_t)
    cpdef start_read_part(self, Py_ssize_t node, CRequest r)

    @cython.locals(node=Py_ssize_t, r=CRequest, tokens=cython.longlong, left=cython.longlong)
    cpdef on_read_part_done(self, item)

    @cython.locals(blocked=CNodeSet, read_node=Py_ssize_t)
    cpdef release_buffer(self, Py_ssize_t node, long long tokens)

    @cython.locals(c=CCluster)
    cpdef make_ready(self, CRequest r)

    @cython.locals(c=CCluster, kv_bw=double, io=bint, new_tokens=cython.longlong, t=double,
                   longest=double, end=double, e=Py_ssize_t, batcher=CBatcher, ch=CChunk,
                   loaded=cython.longlong, stored=cython.longlong, num_chunks=Py_ssize_t, done=list)
    cpdef start_forward(self, Py_ssize_t g)

    @cython.locals(c=CCluster, g=Py_ssize_t, r=CRequest, done=list)
    cpdef on_forward_done(self, item)

    @cython.locals(c=CCluster, a=Py_ssize_t, miss=cython.longlong)
    cpdef prefill_done(self, CRequest r)

    @cython.locals(c=CCluster, e=Py_ssize_t, tpot=double, end=double)
    cpdef allocate(self, CRequest r)

    cpdef on_h2d_done(self, CRequest r)

    @cython.locals(c=CCluster, e=Py_ssize_t, a=Py_ssize_t, block=cython.longlong, written=cython.longlong)
    cpdef on_decode_done(self, CRequest r)
