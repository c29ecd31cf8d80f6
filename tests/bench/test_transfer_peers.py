"""`dualkv bench transfer --peers`: the shared workload's pieces, the worker-output parser, the
round pairing, and each system's runner end to end (two real processes each; NIXL and
Mooncake only where the peers' venv exists)."""
import json
import sys

import numpy as np
import pytest

from dualkv.bench import transfer_peers as tp
from dualkv.bench.transfer_peer_worker import batches, nonadjacent_slots

SMALL = ["--region-mib", "8", "--sizes-kib", "64", "1024", "--seconds", "0.05",
         "--num-layers", "4", "--layer-kib", "256", "--layer-reps", "1"]


def test_nonadjacent_slots_are_distinct_in_range_and_never_touch():
    rng = np.random.default_rng(1)
    for num_slots, count in ((8, 4), (2048, 512), (9, 3), (64, 100)):
        slots = np.sort(nonadjacent_slots(num_slots, count, rng))
        assert len(slots) == min(count, num_slots // 2)
        assert slots.min() >= 0 and slots.max() < num_slots
        assert (np.diff(slots) >= 2).all()


def test_batches_fill_32_mib_or_half_the_region():
    rng = np.random.default_rng(2)
    (loc, rem), *_ = batches(64 * 1024, 128 << 20, rng)
    assert len(loc) == len(rem) == 512
    (loc, rem), *_ = batches(16 << 20, 128 << 20, rng)
    assert len(loc) == 2 and (loc % (16 << 20) == 0).all()


def test_parse_peers_accepts_the_known_and_names_the_unknown():
    assert tp.parse_peers("nixl, mooncake") == ["nixl", "mooncake"]
    with pytest.raises(ValueError, match="ucx"):
        tp.parse_peers("nixl,ucx")
    with pytest.raises(ValueError):
        tp.parse_peers(",")


def test_worker_output_parser_takes_the_last_line_and_refuses_junk():
    rows = [{"test": "bandwidth", "block_bytes": 65536, "gbps": 1.5}]
    text = "a library's banner\n" + json.dumps({"rows": rows}) + "\n"
    assert tp.parse_worker_output(text) == rows
    for bad in ("", "not json\n", json.dumps({"row": []})):
        with pytest.raises(RuntimeError, match="worker"):
            tp.parse_worker_output(bad)


def test_rounds_rotate_the_order():
    systems = ["dualkv", "nixl", "mooncake"]
    firsts = [tp.rotated(systems, r)[0] for r in range(3)]
    assert firsts == systems and tp.rotated(systems, 4) == ["nixl", "mooncake", "dualkv"]


def _rows(gbps, cpu):
    return [{"test": "bandwidth", "block_bytes": 1 << 20, "batch": 32, "gbps": gbps,
             "cpu_s_per_gb_initiator": cpu, "cpu_s_per_gb_target": cpu / 2}]


def test_paired_rows_report_median_ratio_and_per_round_ratios():
    runs = {"dualkv": [_rows(2.0, 1.0), _rows(3.0, 1.0), _rows(4.0, 2.0)],
            "nixl": [_rows(1.0, 2.0), _rows(2.0, 2.0), _rows(4.0, 4.0)]}
    (row,) = tp.paired_rows(runs, "nixl", "tcp")
    assert row["reference"] == "nixl" and row["test"] == "peer_bandwidth"
    assert row["gbps"] == 3.0 and row["ref_gbps"] == 2.0 and row["ratio"] == 1.5
    assert row["round_ratios"] == [2.0, 1.5, 1.0]
    assert row["cpu_s_per_gb_initiator"] == 1.0 and row["ref_cpu_s_per_gb_initiator"] == 2.0
    assert row["cpu_s_per_gb_target"] == 0.5 and row["batch"] == 32


def _check_worker_rows(rows):
    bw = [r for r in rows if r["test"] == "bandwidth"]
    assert [r["block_bytes"] for r in bw] == [64 * 1024, 1 << 20]
    layers = [r for r in rows if r["test"] == "layers"]
    assert len(layers) == 1 and layers[0]["num_layers"] == 4
    for r in rows:
        assert r["gbps"] > 0 and r["cpu_s_per_gb_initiator"] > 0
        assert r["cpu_s_per_gb_target"] >= 0


def test_dualkv_runner_moves_verified_bytes_between_two_processes():
    from dualkv._native import C

    if not hasattr(C, "Agent"):
        pytest.skip("built without UCX")
    rows = tp.run_worker("dualkv", sys.executable, ["--tls", "tcp", *SMALL], 120)
    _check_worker_rows(rows)


@pytest.mark.parametrize("peer", tp.PEERS)
def test_peer_runner_moves_verified_bytes_between_two_processes(peer):
    python, why = tp.peer_python(peer)
    if python is None:
        pytest.skip(why)
    rows = tp.run_worker(peer, python, ["--tls", "tcp", *SMALL], 180)
    _check_worker_rows(rows)


def test_missing_peer_venv_is_a_skipped_row_not_a_crash(tmp_path, monkeypatch):
    from dualkv.bench.report import Report

    monkeypatch.setenv("DUALKV_VENVS", str(tmp_path))
    report = Report("bench transfer", as_json=True)
    args = type("A", (), {"tls": "tcp", "peers": "nixl"})()
    tp.peer_rows(report, args)
    assert report.rows == [{"test": "peer", "reference": "nixl", "tls": "tcp",
                            "skipped": f"no peers venv at {tmp_path / 'peers'} "
                                       "(run scripts/venv.sh peers)"}]


UCX_113_TABLE = """\
[1796279965.373563] [vm:26905:0]   +--------------------------+---------------------------------------------------------------+
[1796279965.373563] [vm:26905:0]   | 0x555d3a05c160 ep_cfg[0] | remote memory write by ucp_put*() from host memory to host    |
[1796279965.373563] [vm:26905:0]   +--------------------------+------------------------------------------------------+--------+
[1796279965.373563] [vm:26905:0]   |                   0..inf | software emulation                                   | tcp/lo |
[1796279965.373563] [vm:26905:0]   +--------------------------+------------------------------------------------------+--------+
[1796279965.373563] [vm:26905:0]   | 0x555d3a05c160 ep_cfg[0] | active message by ucp_am_send*() from host memory    |
[1796279965.373563] [vm:26905:0]   |                   0..8184 | short                                   | tcp/lo |
"""
UCX_122_TABLE = """\
[1796279974.885173] [vm:26957:0]   | remote memory write by ucp_put* from host memory to host |
[1796279974.885173] [vm:26957:0]   +--------+-------------+-----------------------------------+
[1796279974.885173] [vm:26957:0]   | Range  | Description |              Config               |
[1796279974.885173] [vm:26957:0]   +--------+-------------+-----------------------------------+
[1796279974.885173] [vm:26957:0]   | 0..inf | zero-copy   | 52% on tcp/lo and 48% on tcp/eth0 |
[1796279974.885173] [vm:26957:0]   +--------+-------------+-----------------------------------+
[1796279974.914496] [vm:26957:0]   |   1..16515 | zero-copy          | tcp/lo        |
"""


def test_put_protocol_parser_reads_only_the_put_table():
    from dualkv.bench.transfer_protocols import put_protocols

    assert put_protocols(UCX_113_TABLE) == [("0..inf", "software emulation", "tcp/lo")]
    assert put_protocols(UCX_122_TABLE) == [
        ("0..inf", "zero-copy", "52% on tcp/lo and 48% on tcp/eth0")]
    assert put_protocols("no table here") == []


def test_layer_slots_are_distinct_and_never_follow_a_neighbour():
    from dualkv.bench.transfer_peer_worker import shuffled_slots

    rng = np.random.default_rng(3)
    for _ in range(20):
        slots = shuffled_slots(64, 61, rng)  # 61 x 2 MiB in 128 MiB
        assert len(set(slots.tolist())) == 61 and slots.max() < 64
        assert (np.abs(np.diff(slots)) > 1).all()
