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
