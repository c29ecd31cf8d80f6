import json

from dualkv.bench.trace import main


def test_replays_the_packaged_trace(monkeypatch, capsys):
    monkeypatch.delenv("DUALKV_TRACE", raising=False)
    assert main(["--limit", "40", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    unbounded, bounded = doc["results"]
    assert doc["command"] == "bench trace" and unbounded["requests"] == 40
    assert 0 < unbounded["hit_ratio"] < 1 and unbounded["capacity_blocks"] == "unbounded"
    assert bounded["evictions"] > 0 and bounded["hit_ratio"] <= unbounded["hit_ratio"]


def test_a_bad_trace_is_one_line(tmp_path, capsys):
    bad = tmp_path / "t.jsonl.gz"
    bad.write_text("not gzip")
    assert main(["--trace", str(bad)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"dualkv bench trace: {bad}: cannot read it")
