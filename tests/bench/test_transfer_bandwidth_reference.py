"""`dualkv bench transfer`'s bandwidth rows with ucx_perftest on: each op beside perftest's
test of the same op (put vs ucp_put_bw, get vs ucp_get), whole-run figures, and dualkv's peer
in a process of its own as perftest's server is."""
import json
import os

import pytest

from dualkv.bench import transfer, ucx_perftest


@pytest.mark.skipif(not ucx_perftest.available(), reason="ucx_perftest is not installed")
def test_bandwidth_rows_compare_the_same_operation(capsys):
    transfer.main(["--sizes-kib", "64", "--batches", "1", "--patterns", "reuse", "--reps", "2",
                   "--seconds", "0.02", "--skip", "lat", "priority", "bucket", "--json"])
    rows = json.loads(capsys.readouterr().out)["results"]
    by_op = {row["op"]: row for row in rows if row["test"] == "bandwidth"}
    assert by_op["put"]["reference"] == "ucx_perftest ucp_put_bw"
    assert by_op["get"]["reference"] == "ucx_perftest ucp_get"
    for row in by_op.values():
        assert row["ref_gbps"] > 0 and row["higher_is_better"] is True
        # perftest ran once per repetition, before dualkv in the first and after it in the second
        assert len(row["ref_runs_gbps"]) == len(row["runs_gbps"]) == 2
        assert row["ratio"] == pytest.approx(row["gbps"] / row["ref_gbps"])


def test_process_pair_moves_bytes_to_and_from_the_other_process():
    import numpy as np

    from dualkv.bench.peer_process import ProcessPair

    pair = ProcessPair("kv", None, 1 << 20)
    try:
        assert pair.proc.is_alive() and pair.proc.pid != os.getpid()
        pattern = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
        pair.buf_a[:4096] = pattern
        lengths = np.full(1, 4096, np.int64)
        for op, loc, rem in ((pair.a.put, 0, 8192), (pair.a.get, 4096, 8192)):
            h = op(pair.peer_ab, pair.ra, pair.rb.id, [loc], [rem], lengths)
            pair.a.wait(h, 30)
            pair.a.release(h)
        # the bytes went into the other process' region and came back from it
        assert (pair.buf_a[4096:8192] == pattern).all()
    finally:
        pair.close()
    assert not pair.proc.is_alive()
