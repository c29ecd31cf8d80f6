# Compiles request.py's two hot types as C-backed classes (typed fields, direct access from the
# other compiled sched/sim modules). Semantics are the .py's; without a build the .py runs as is.

cdef class Request:
    cdef public object rid, read_side, tag
    cdef public long long prompt_tokens, hit_tokens, gen_tokens
    cdef public long long pe, de, pe_node, de_node, num_computed


cdef class EngineReport:
    cdef public long long engine_id, seq, tok
    cdef public double free_hbm_tokens
