import numpy as np
import pytest

from dualkv.workloads.mooncake import (TraceRequest, block_tokens_for_id, default_trace_path,
                                       load_trace, request_tokens)


def test_shared_ids_give_shared_prefixes():
    a = TraceRequest(0, 1100, 1, (7, 8, 9))
    b = TraceRequest(0, 700, 1, (7, 8))
    ta, tb = request_tokens(a), request_tokens(b)
    assert ta.dtype == np.int32 and len(ta) == 1100 and len(tb) == 700
    assert np.array_equal(ta[:512], tb[:512])
    assert np.array_equal(ta[512:700], tb[512:700])


def test_different_ids_differ_and_same_id_is_stable():
    assert not np.array_equal(block_tokens_for_id(1), block_tokens_for_id(2))
    assert np.array_equal(block_tokens_for_id(5), block_tokens_for_id(5))


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DUALKV_TRACE"):
        load_trace(tmp_path / "nope.jsonl")


@pytest.mark.skipif(not default_trace_path().is_file(), reason="trace not beside the repo")
def test_real_trace_loads():
    requests = load_trace(limit=50)
    assert len(requests) == 50
    for r in requests:
        assert len(r.hash_ids) == (r.input_length + 511) // 512
