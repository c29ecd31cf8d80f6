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


def test_a_missing_root_is_one_line_before_anything_runs(tmp_path):
    """(issue 16, item 12) `--root` names the parent of the demo's block folders: a missing
    one ends the command with one line, before a progress bar or a node starts."""
    missing = tmp_path / "nope"
    for extra in ([], ["--slo-capacity"]):
        done = subprocess.run([sys.executable, "-m", "dualkv.cli", "demo", "--root", str(missing),
                               *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        (line,) = done.stderr.splitlines()
        assert line == f"dualkv demo: --root {missing} is not a directory"
