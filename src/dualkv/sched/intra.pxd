# Compiles intra.py's PrefillBatcher as a C-backed class: next_batch runs once per PE GPU per
# forward, with a binary search of ~15 quota checks when a request overflows the quota.
cimport cython
from dualkv.sched.cost cimport FlopCurve, attention_flops
from dualkv.sched.request cimport Request


@cython.final
cdef class Chunk:
    cdef public Request request
    cdef public long long cached, bsz
    cdef public bint is_last

    cpdef _fill(self, Request request, long long cached, long long bsz, bint is_last)


@cython.locals(chunk=Chunk)
cpdef Chunk new_chunk(Request request, long long cached, long long bsz, bint is_last)


cdef class PrefillBatcher:
    cdef public object attn_flops, curve, quota_s, max_kv_tokens
    cdef bint _shape
    cdef long long _layers, _topk
    cdef double _pair, _index
    cdef FlopCurve _flop_curve

    @cython.locals(request=Request, flops=double, kv=cython.longlong, cached=cython.longlong,
                   left=cython.longlong, bsz=cython.longlong, is_last=bint)
    cpdef tuple next_batch(self, queue)

    cpdef double _attention(self, long long cached, long long bsz) except? -1.0
    cpdef double _seconds(self, double flops) except? -1.0
    cpdef bint _fits(self, double flops, long long cached, long long bsz) except -1

    @cython.locals(lo=cython.longlong, hi=cython.longlong, mid=cython.longlong)
    cpdef long long _largest_fit(self, double flops, long long cached, long long left) except -1
