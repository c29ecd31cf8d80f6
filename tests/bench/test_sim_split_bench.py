"""bench sim-split: both policies on the same cases, the split's row against dualpath's."""
import json

from dualkv.bench.sim_split import compare, main, summarize


def test_split_rows_name_dualpath_as_reference():
    rows = [dict(model="m", pd="1P2D", workload="burst", policy="dualpath", jct_s=100.0),
            dict(model="m", pd="1P2D", workload="burst", policy="split", jct_s=90.0),
            dict(model="m", pd="1P2D", workload="online", policy="dualpath", ttft_mean_s=2.0),
            dict(model="m", pd="1P2D", workload="online", policy="split", ttft_mean_s=3.0)]
    out = compare(rows)
    assert out[1]["reference"] == "dualpath" and out[1]["ref_jct_s"] == 100.0 and out[1]["ratio"] == 0.9
    assert out[3]["ref_ttft_mean_s"] == 2.0 and out[3]["ratio"] == 1.5
    assert "reference" not in out[0]
    (burst, online) = summarize(out)
    assert (burst["ratio_mean"], burst["num_split_better"], online["num_split_better"]) == (0.9, 1, 0)


def test_a_small_matrix_runs_burst_then_online(capsys):
    main(["--models", "ds27b", "--ratios", "1:1", "--agents", "8", "--gpus-per-node", "2",
          "--maxlen", "32k", "--max-s", "300", "--json"])
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["workload"] for r in rows if r.get("kind") == "summary"] == ["burst", "online"]
    rows = [r for r in rows if r.get("kind") != "summary"]
    assert [(r["workload"], r["policy"]) for r in rows] == [
        ("burst", "dualpath"), ("burst", "split"), ("online", "dualpath"), ("online", "split")]
    burst = rows[0]
    assert rows[2]["aps"] == 0.5 * burst["agents"] / burst["jct_s"]  # --load 0.5 of the burst
    assert rows[0]["split_reads"] == 0 and rows[1]["split_reads"] > 0
