"""`dualkv bench cluster` end to end on a tiny configuration: both policies run every turn on
a real local cluster, Basic reads on the PE node only, DualPath on several nodes, and the rows
name both emulated NICs."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")


def test_cluster_bench_rows(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dualkv.cli", "bench", "cluster", "--agents", "3", "--rounds", "1",
         "--context", "128", "--append", "8", "--gen", "2", "--block-tokens", "16",
         "--hidden", "32", "--snic-mbps", "5", "--root", str(tmp_path), "--json"],
        check=True, capture_output=True, text=True, timeout=300).stdout
    rows = {r["policy"]: r for r in json.loads(out)["results"]}
    assert set(rows) == {"basic", "dualpath"}
    for row in rows.values():
        assert row["jct_s"] > 0 and row["turns_per_s"] > 0
        assert (row["snic_mbps"], row["cnic_mbps"]) == (5.0, 40.0)
    assert rows["basic"]["snic_mb"][1:] == [0.0, 0.0] and rows["basic"]["snic_mb"][0] > 0
    assert sum(b > 0 for b in rows["dualpath"]["snic_mb"]) >= 2  # DE nodes read too
    assert rows["dualpath"]["ratio"] > 0
