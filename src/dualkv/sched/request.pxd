# Compiles request.py's two hot types as C-backed classes (typed fields, direct access from the
# other compiled sched/sim modules). Semantics are the .py's; without a build the .py runs as is.
cimport cython

cpdef bint is_side(side, str name) except -1


# final: nothing subclasses it (its cpdef _fill is then a direct call)
@cython.final
cdef class Request:
    cdef public object rid, read_side, tag
    cdef public long long prompt_tokens, hit_tokens, gen_tokens
    cdef public long long pe, de, pe_node, de_node, num_computed, pe_read_tokens, slot

    cpdef _fill(self, rid, long long prompt_tokens, long long hit_tokens, long long gen_tokens, tag)


@cython.locals(request=Request)
cpdef Request new_request(rid, long long prompt_tokens, long long hit_tokens, long long gen_tokens,
                          tag=*, long long slot=*)


cdef class EngineReport:
    cdef public long long engine_id, seq, tok
    cdef public double free_hbm_tokens


cdef class GroupReport:
    cdef public object group_id, read_q, engines


cdef class FetchResult:
    cdef public list assigned, placed, woken_groups
