"""`dualkv bench transfer`'s bandwidth rows with ucx_perftest on: each op beside perftest's
test of the same op (put vs ucp_put_bw, get vs ucp_get), whole-run figures."""
import json

import pytest

from dualkv.bench import transfer, ucx_perftest


@pytest.mark.skipif(not ucx_perftest.available(), reason="ucx_perftest is not installed")
def test_bandwidth_rows_compare_the_same_operation(capsys):
    transfer.main(["--sizes-kib", "64", "--batches", "1", "--patterns", "reuse", "--reps", "1",
                   "--seconds", "0.02", "--skip", "lat", "priority", "bucket", "--json"])
    rows = json.loads(capsys.readouterr().out)["results"]
    by_op = {row["op"]: row for row in rows if row["test"] == "bandwidth"}
    assert by_op["put"]["reference"] == "ucx_perftest ucp_put_bw"
    assert by_op["get"]["reference"] == "ucx_perftest ucp_get"
    for row in by_op.values():
        assert row["ref_gbps"] > 0 and row["higher_is_better"] is True
        assert row["ratio"] == pytest.approx(row["gbps"] / row["ref_gbps"])
