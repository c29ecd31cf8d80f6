import json
import subprocess
import sys


def test_demo_replays_the_trace_and_reports_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dualkv.cli", "demo", "store", "--requests", "12", "--reread-blocks", "64",
         "--batch", "8", "--no-fio", "--json", "--dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600).stdout
    doc = json.loads(out)
    (row,) = doc["results"]
    assert doc["command"] == "demo store"
    assert row["requests"] == 12
    assert row["blocks"] > 0 and 0 <= row["hit_ratio"] < 1
    assert row["reread_blocks"] > 0 and row["reread_gbps"] > 0
