"""The calibration reads its points from one data file and fits on them alone."""
import contextlib
import json
import os
import sys

import pytest

from dualkv.errors import InvalidArgument
from dualkv.sim import calibrate
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic

FIT = [{"constant": "pe_flops_per_s", "policy": "oracle", "agents": 24},
       {"constant": "snic_tokens_per_s", "policy": "basic", "agents": 24}]
SMALL = {"pe_nodes": 1, "de_nodes": 1, "maxlen": "32k", "fit": FIT}
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pxd")  # imports; everything else opened is data
_RECORDING: list = []  # the audit hook's sink while a test records; a hook cannot be removed


def _audit(event, args):
    if event == "open" and _RECORDING and not isinstance(args[0], int):  # an int is an fd
        _RECORDING[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def _opened_files():
    """Every file path opened inside the block (the interpreter's 'open' audit event)."""
    opened: list = []
    _RECORDING.append(opened)
    try:
        yield opened
    finally:
        _RECORDING.pop()


def _jct(model, policy, agents) -> float:
    return run_offline(SimConfig(model, policy, 1, 1), agentic("32k", agents))[0]["jct_s"]


def _write(tmp_path, spec) -> str:
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"layer_step": 0.1721, "models": {"ds27b": spec}}))
    return str(path)


def test_packaged_file_holds_each_models_64k_row():
    data = calibrate.load_points()
    models = data["models"]
    assert set(models) == {"ds660b", "ds27b", "qwen32b"}
    qwen = models["qwen32b"]
    assert (qwen["pe_nodes"], qwen["de_nodes"], qwen["maxlen"]) == (1, 2, "64k")
    assert [p["agents"] for p in qwen["points"]] == [32, 64, 128]
    assert calibrate.ref_jct(data, "qwen32b", "basic", 128) == 4961
    assert calibrate.ref_jct(data, "ds660b", "layer", 2048) == pytest.approx(0.8279 * 10078)


def test_fit_recovers_constants_from_the_file_alone(tmp_path):
    # Targets made by the simulator itself at constants far from the preset's: the fit can
    # land on them only by reading this file's numbers (and its cluster, trace set, agents).
    # Truth and start are slow enough that each point binds its constant: 24 agents of the
    # 32K set are compute bound at 1/60 of the preset's FLOP rate (Oracle JCT ~ rate^-1.6)
    # and storage bound on Basic at 1/150 of its storage rate.
    preset = get_preset("ds27b")
    truth = {"pe_flops_per_s": preset.pe_flops_per_s / 60, "snic_tokens_per_s": preset.snic_tokens_per_s / 150}
    start = {name: value * 1.35 for name, value in truth.items()}
    model = get_preset("ds27b", **truth)
    agents = 24
    point = {"agents": agents, "oracle": _jct(model, "oracle", agents),
             "dualpath": 1.0, "basic": _jct(model, "basic", agents)}
    path = _write(tmp_path, dict(SMALL, points=[point]))
    with _opened_files() as opened:
        data = calibrate.load_points(path)
        fitted = calibrate.fit_model(data, "ds27b", quiet=True, start=start)
    assert [f for f in opened if not f.endswith(CODE_SUFFIXES)] == [path]  # no other data read
    assert set(fitted) == set(truth)  # the file's fit steps, no other constant
    for name, value in truth.items():
        assert fitted[name] == pytest.approx(value, rel=0.03), name


def test_bad_calibration_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot read"):
        calibrate.load_points(tmp_path / "absent.json")
    spec = dict(SMALL, points=[{"agents": 24, "oracle": 1.0, "basic": 2.0}])  # no dualpath
    with pytest.raises(InvalidArgument, match="every point needs"):
        calibrate.load_points(_write(tmp_path, spec))
    bad_step = dict(SMALL, fit=[{"constant": "num_layers", "policy": "oracle", "agents": 24}],
                    points=[{"agents": 24, "oracle": 1.0, "dualpath": 1.0, "basic": 2.0}])
    with pytest.raises(InvalidArgument, match="bad fit step"):
        calibrate.load_points(_write(tmp_path, bad_step))
    with pytest.raises(InvalidArgument, match="lacks maxlen"):
        calibrate.load_points(_write(tmp_path, {k: v for k, v in SMALL.items() if k != "maxlen"}))


def test_cli_prints_every_points_residual(tmp_path, capsys):
    from dualkv.cli import main

    points = [{"agents": 8, "oracle": 500.0, "dualpath": 600.0, "basic": 700.0},
              {"agents": 24, "oracle": 900.0, "dualpath": 1000.0, "basic": 1100.0}]
    path = _write(tmp_path, dict(SMALL, points=points))
    assert main(["sim", "calibrate", "--model", "ds27b", "--data", path, "--no-fit", "--jobs", "1",
                 "--policy", "oracle,basic"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    rows = [line for line in lines if line[:1] == ["ds27b"] and len(line) == 6]
    assert sorted((r[1], int(r[2])) for r in rows) == [("basic", 8), ("basic", 24),
                                                        ("oracle", 8), ("oracle", 24)]
    for r in rows:
        sim_s, paper_s = float(r[3]), float(r[4])
        assert float(r[5].rstrip("%")) == pytest.approx(100 * (sim_s / paper_s - 1), abs=0.2)


def test_cli_json_rows_carry_the_fitted_constants(tmp_path, capsys):
    from dualkv.cli import main

    point = {"agents": 8, "oracle": 500.0, "dualpath": 600.0, "basic": 700.0}
    fit = [{"constant": "pe_flops_per_s", "policy": "oracle", "agents": 8}]
    path = _write(tmp_path, dict(SMALL, fit=fit, points=[point]))
    assert main(["sim", "calibrate", "--model", "ds27b", "--data", path, "--json", "--jobs", "1",
                 "--policy", "oracle"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "sim calibrate" and "machine" in doc
    (row,) = doc["results"]
    assert row["ref_jct_s"] == 500.0 and row["pe_flops_per_s"] > 0
