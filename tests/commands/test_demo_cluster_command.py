"""`dualkv demo` (the main job) on a very small configuration: the three policies each run
every turn on a real 1 PE + 2 DE local cluster, and the JSON document has the report shape,
the simulator's prediction and the figure."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")


def test_demo_runs_every_turn_of_every_policy(tmp_path):
    env = dict(os.environ, DUALKV_CALIBRATION_DIR=str(tmp_path / "calibration"))
    out = subprocess.run(
        [sys.executable, "-m", "dualkv.cli", "demo", "--agents", "2", "--rounds", "1",
         "--context", "64", "--append", "8", "--gen", "2", "--block-tokens", "16",
         "--hidden", "32", "--snic-mbps", "5", "--root", str(tmp_path),
         "--out", str(tmp_path / "out"), "--json"],
        check=True, capture_output=True, text=True, timeout=300, env=env).stdout
    doc = json.loads(out)
    assert doc["command"] == "demo" and "machine" in doc
    rows = {row["policy"]: row for row in doc["results"]}
    assert set(rows) == {"basic", "dualpath", "oracle"}
    for row in rows.values():
        assert row["turns"] == 2 and row["turns_done"] == 2
        assert row["jct_s"] > 0 and row["turns_per_s"] > 0
        assert len(row["snic_mb"]) == 3 and row["ttft_p50_s"] <= row["ttft_p90_s"]
        assert row["tpot_p50_ms"] > 0 and row["sim_turns_per_s"] > 0
    assert rows["basic"]["snic_mb"][1:] == [0.0, 0.0]  # Basic reads on the PE node only
    assert rows["dualpath"]["ratio"] > 0 and rows["dualpath"]["sim_ratio"] > 0
    # the prediction's constants: a calibration run of its own, made now and cached
    calibration = rows["dualpath"]["sim_calibration"]
    assert calibration.startswith(str(tmp_path / "calibration"))
    assert rows["dualpath"]["sim_calibration_reused"] is False
    assert json.load(open(calibration))["key"]["seed"] != 0
    assert (tmp_path / "out" / "demo.png").stat().st_size > 0


def _demo_json(tmp_path, *extra) -> dict:
    """`dualkv demo` on a tiny model, its --json document."""
    out = subprocess.run(
        [sys.executable, "-m", "dualkv.cli", "demo", "--gen", "3", "--block-tokens", "16",
         "--hidden", "32", "--snic-mbps", "5", "--root", str(tmp_path),
         "--out", str(tmp_path / "out"), "--json", *extra],
        check=True, capture_output=True, text=True, timeout=300).stdout
    return json.loads(out)


def _demo(tmp_path, *extra):
    return {row["policy"]: row for row in _demo_json(tmp_path, *extra)["results"]}


def test_demo_online_mooncake_trace(tmp_path):
    """The Mooncake trace as an online cluster workload: every request runs at its (rescaled)
    arrival, with TTFT / TTST / TPOT percentiles; Basic reads on the PE node only."""
    rows = _demo(tmp_path, "--workload", "mooncake", "--trace-requests", "6", "--rate", "3",
                 "--trace-block-tokens", "16", "--max-prompt", "256", "--policies", "basic,dualpath")
    for row in rows.values():
        assert row["workload"] == "mooncake" and row["turns"] == row["turns_done"] == 6
        for name in ("ttft", "ttst"):
            assert 0 < row[f"{name}_p50_s"] <= row[f"{name}_p90_s"] <= row[f"{name}_p99_s"]
        assert row["ttft_p50_s"] < row["ttst_p50_s"] and row["tpot_p50_ms"] > 0
    assert rows["basic"]["snic_mb"][1:] == [0.0, 0.0]


def test_demo_online_agents_arrive_and_overlap(tmp_path):
    """Agents arriving at 4/s, each turn chained on its previous one: every turn of every agent
    runs, the second reading the first's context back."""
    rows = _demo(tmp_path, "--agents", "3", "--rounds", "1", "--context", "64", "--append", "8",
                 "--rate", "4", "--policies", "dualpath")
    row = rows["dualpath"]
    assert row["workload"] == "agentic" and row["sessions"] == 3
    assert row["turns"] == row["turns_done"] == 6 and row["cached_tokens"] > 0
    assert 1 <= row["peak_turns_in_flight"] <= 3


@pytest.mark.slow
def test_demo_slo_capacity_is_the_largest_rate_meeting_the_slo(tmp_path):
    """--slo-capacity runs the online workload per rate until one misses the SLO: a bound no
    run can meet gives capacity 0 after the first rate; a generous one, the highest rate."""
    common = ("--slo-capacity", "--rates", "4,2", "--agents", "2", "--rounds", "1",
              "--context", "64", "--append", "8", "--policies", "dualpath", "--num-de", "1")
    rows = _demo_rows(tmp_path, *common, "--ttft-slo-s", "0.001")
    assert [(r["rate"], r["meets_slo"], r["capacity_aps"]) for r in rows] == [(2.0, False, 0.0)]
    assert rows[0]["ttft_mean_s"] > 0.001 and rows[0]["ttft_slo_s"] == 0.001
    rows = _demo_rows(tmp_path, *common, "--ttft-slo-s", "600", "--tpot-slo-ms", "60000")
    assert [(r["rate"], r["meets_slo"], r["capacity_aps"]) for r in rows] == [
        (2.0, True, 4.0), (4.0, True, 4.0)]
    for row in rows:
        assert row["turns"] == row["turns_done"] == 4 and row["tpot_mean_ms"] > 0
        assert row["ttft_p50_s"] <= row["ttft_p90_s"] and row["tpot_slo_ms"] == 60000


def _demo_rows(tmp_path, *extra):
    doc = _demo_json(tmp_path, *extra)
    assert doc["command"] == "demo slo-capacity"
    return doc["results"]


def test_demo_slo_capacity_refuses_a_bad_grid(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualkv.cli", "demo", "--slo-capacity",
                          "--rates", "1,-2", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--rates must be > 0" in out.stderr
