import json

from dualkv.cli import main


def test_offline_json_and_plots(tmp_path, capsys):
    out = tmp_path / "plots"
    main(["sim", "offline", "--model", "ds27b", "--pe", "1", "--de", "1", "--agents", "8",
          "--maxlen", "32k", "--policy", "basic,dualpath", "--out", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "sim offline" and "machine" in doc
    assert [r["policy"] for r in doc["results"]] == ["basic", "dualpath"]
    assert all(r["jct_s"] > 0 for r in doc["results"])
    assert (out / "jct.png").stat().st_size > 0 and (out / "snic_balance.png").exists()


def test_bad_policy_is_a_clear_error(tmp_path, capsys):
    assert main(["sim", "offline", "--policy", "fastest", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("dualkv sim: ") and "fastest" in line


def test_offline_reports_each_storage_nic(tmp_path, capsys):
    main(["sim", "offline", "--model", "ds27b", "--pe", "1", "--de", "2", "--agents", "8",
          "--maxlen", "32k", "--policy", "dualpath,round_robin", "--out", str(tmp_path)])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("snic read GB")]
    assert [l.split(":")[0] for l in lines] == ["snic read GB dualpath", "snic read GB round_robin"]
    assert all("PE [" in l and "DE [" in l and "max/avg" in l for l in lines)


def test_plan_json_rows_recommendations_and_png(tmp_path, capsys):
    main(["sim", "plan", "--model", "ds27b", "--nodes", "3", "--maxlen", "32k", "--agents", "8",
          "--workers", "2", "--out", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "sim plan"
    splits = [(r["policy"], r["split"]) for r in doc["results"] if r["kind"] == "split"]
    assert splits == [("basic", "1P2D"), ("basic", "2P1D"), ("dualpath", "1P2D"), ("dualpath", "2P1D")]
    recs = {r["policy"]: r for r in doc["results"] if r["kind"] == "recommendation"}
    for policy, rec in recs.items():
        best = min((r for r in doc["results"] if r["kind"] == "split" and r["policy"] == policy),
                   key=lambda r: r["jct_s"])
        assert rec["best_split"] == best["split"] and rec["spread"] >= 0
    assert (tmp_path / "plan.png").stat().st_size > 0


def test_plan_needs_one_of_agents_and_aps(tmp_path, capsys):
    for extra in ([], ["--agents", "8", "--aps", "0.1"]):
        assert main(["sim", "plan", "--nodes", "3", "--out", str(tmp_path)] + extra) == 2
        assert "exactly one of --agents" in capsys.readouterr().err
    assert main(["sim", "plan", "--agents", "8", "--out", str(tmp_path)]) == 2
    assert "--nodes" in capsys.readouterr().err
