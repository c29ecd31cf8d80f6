"""`dualkv bench sglang` end to end on a few pages: both systems run every op, with and
without O_DIRECT, and the bench leaves nothing behind."""
import json
import os

import pytest

pytest.importorskip("sglang")

from dualkv.bench import sglang as bench  # noqa: E402


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_bench_rows_for_every_op(tmp_path, capsys, buffered):
    argv = ["--dir", str(tmp_path), "--presets", "mla", "--pages", "4", "--repeat", "1",
            "--no-fio", "--json"] + (["--buffered"] if buffered else [])
    assert bench.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["op"] for r in rows] == ["set_durable", "get_cold", "get_warm"]
    for row in rows:
        assert row["reference"] == "HiCacheFile" and row["gbps"] > 0 and row["ref_gbps"] > 0
        assert row["direct_io"] is (not buffered)
        assert row["io_path"] == "direct"  # the pool's regions are 4 KiB-aligned whole pages
        assert row["pages"] == 4 and row["preset"] == "mla"
    assert os.listdir(tmp_path) == []  # its work folder is removed
