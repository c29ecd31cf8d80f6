# C types for select.py's loops (one call per request per fetch, over 8 engines each).
cimport cython
from dualkv.sched.request cimport EngineReport, Request


@cython.locals(best2=Py_ssize_t, best3=Py_ssize_t, i=Py_ssize_t, e=EngineReport,
               tok2=cython.longlong, tok3=cython.longlong, read_q=double)
cpdef Py_ssize_t select_pe(engines, read_qs, double alpha, double beta) except? -2

@cython.locals(pick=Py_ssize_t, e=EngineReport, request=Request)
cpdef list assign_pes(queue, engines, read_qs, double alpha, double beta)

@cython.locals(free_total=double, group_tok=cython.longlong, fit_tokens=cython.longlong,
               fit_need=cython.longlong, z=double, e=EngineReport, request=Request, pick=Py_ssize_t,
               need=cython.longlong)
cpdef list assign_des(queue, engines, double z_margin)

@cython.locals(low=Py_ssize_t, high=Py_ssize_t, low_seq=cython.longlong, high_tok=cython.longlong,
               need=cython.longlong, size=cython.longlong, i=Py_ssize_t, e=EngineReport)
cpdef Py_ssize_t _pick_de(engines, Request request, double z) except? -2


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class LeastLoaded:
    cdef public list ids
    cdef public dict index
    cdef public double[:] loads

    cpdef set(self, g, double tokens)
    cpdef add(self, g, double delta)
    cpdef set_at(self, Py_ssize_t i, double tokens)
    cpdef add_at(self, Py_ssize_t i, double delta)
    cpdef argmin(self)
    @cython.locals(best=Py_ssize_t, i=Py_ssize_t, least=double, load=double)
    cpdef Py_ssize_t argmin_at(self) except -1


cpdef shorter_queue_side(double pe_read_q, double de_read_q)
