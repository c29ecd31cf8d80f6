# C types for cost.py: the quota check of the PE batcher evaluates both functions ~15 times per
# overflowing request (binary search).
cimport cython


# final: nothing subclasses it, so its cpdef methods are called directly
# (no vtable, no check for a Python override)
@cython.final
cdef class FlopCurve:
    cdef double[:] _xs, _ys

    @cython.locals(i=Py_ssize_t, last=Py_ssize_t, slope=double)
    cpdef double seconds_for(self, double flops) except? -1.0


@cython.locals(all_pairs=double, pairs=double, dense_part=cython.longlong)
cpdef double attention_flops(long long num_layers, double flops_per_pair, long long topk,
                             double index_flops_per_pair, long long cached, long long bsz) except? -1.0
