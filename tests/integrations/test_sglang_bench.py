"""`dualkv bench sglang` end to end on a few pages: both systems run every op, with and
without O_DIRECT, and the bench leaves nothing behind."""
import json
import os
import shutil

import pytest

pytest.importorskip("sglang")

from dualkv.bench import sglang as bench  # noqa: E402
from dualkv.errors import InvalidArgument  # noqa: E402


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_bench_rows_for_every_op(tmp_path, capsys, buffered):
    argv = ["--dir", str(tmp_path), "--presets", "mla", "--pages", "4", "--repeat", "3",
            "--no-fio", "--json"] + (["--buffered"] if buffered else [])
    assert bench.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["op"] for r in rows] == ["set_durable", "get_cold", "get_warm"]
    for row in rows:
        assert row["reference"] == "HiCacheFile" and row["gbps"] > 0 and row["ref_gbps"] > 0
        assert row["direct_io"] is (not buffered)
        assert row["io_path"] == "direct"  # the pool's regions are 4 KiB-aligned whole pages
        assert row["pages"] == 4 and row["preset"] == "mla"
        assert row["num_rounds"] == 3 and len(row["ratios_of_rounds"]) == 3
        assert row["durability"].endswith("(both systems)")
    assert os.listdir(tmp_path) == []  # its work folder is removed


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_bench_against_fio_pairs_each_round(tmp_path, capsys):
    argv = ["--dir", str(tmp_path), "--presets", "mla", "--pages", "4", "--repeat", "3",
            "--json"]
    assert bench.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    fio_rows = {r["op"]: r for r in rows if r["reference"] == "fio"}
    assert sorted(fio_rows) == ["get_cold", "set_durable"]
    assert fio_rows["set_durable"]["ref_op"] == "fio O_DIRECT write"
    assert fio_rows["get_cold"]["ref_op"] == "fio O_DIRECT read"
    for row in fio_rows.values():
        assert row["num_rounds"] == 3 and row["ref_gbps"] > 0 and row["higher_is_better"]
        pairs = zip(row["runs_gbps"], row["ref_runs_gbps"])
        assert row["ratios_of_rounds"] == pytest.approx([a / b for a, b in pairs], rel=1e-2)
    assert os.listdir(tmp_path) == []


def test_bench_refuses_fewer_than_three_rounds(tmp_path):
    with pytest.raises(InvalidArgument, match="at least 3 rounds"):
        bench.main(["--dir", str(tmp_path), "--repeat", "1", "--no-fio"])


def test_hicachefile_gets_one_syncfs_not_a_flush_per_page(tmp_path, monkeypatch):
    """The durability step of the reference side is dualkv's own: one syncfs per batch."""
    from dualkv.bench import _sglang_systems as systems

    calls = {"syncfs": 0, "fdatasync": 0}
    real_syncfs, real_fdatasync = systems.syncfs, os.fdatasync
    monkeypatch.setattr(systems, "syncfs", lambda path: (calls.__setitem__(
        "syncfs", calls["syncfs"] + 1), real_syncfs(path))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.__setitem__(
        "fdatasync", calls["fdatasync"] + 1), real_fdatasync(fd))[1])
    import torch

    from dualkv.testing.sglang_cpu import make_host_pool

    preset = bench.PRESETS["mla"]
    pool = make_host_pool("mla", "page_first", num_pages=4,
                          **{k: v for k, v in preset.items() if k != "kind"})
    host_indices = pool.alloc(4 * pool.page_size)
    pool.kv_buffer.view(-1).view(dtype=torch.uint8).random_()
    side = systems.HiCacheFileSide(pool, str(tmp_path / "hicache"))
    assert side.set_durable(side.fresh_keys(4), host_indices) > 0
    side.close()
    assert calls == {"syncfs": 1, "fdatasync": 0}
