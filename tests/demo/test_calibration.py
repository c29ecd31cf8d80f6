"""The demo's simulator constants come from a calibration run of their own, cached on disk:
never from the runs the prediction is compared with."""
import argparse
import json

import pytest

from dualkv.demo import calibration
from dualkv.demo.cluster_demo import demo_model
from dualkv.demo.cluster_predict import predict

pytest.importorskip("torch")


def demo_args(**over):
    args = dict(agents=2, rounds=2, context=256, append=16, gen=4, num_de=2, block_tokens=64,
                seed=0, hidden=64, layers=2, snic_mbps=0.5)
    args.update(over)
    return argparse.Namespace(**args)


FAKE = {"pe_flops_per_s": 2e9, "tpot_s": 0.01,
        "workload": {"prompt": [300, 340, 300, 340], "hit": [256, 256, 256, 256],
                     "gen": [4, 4, 4, 4], "start": [0, 2, 4]}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALKV_CALIBRATION_DIR", str(tmp_path))
    calls = []

    def fake_measure(args, cfg, progress=None):
        calls.append(args.seed)
        return dict(FAKE)
    monkeypatch.setattr(calibration, "measure", fake_measure)
    return tmp_path, calls


def test_measured_once_then_reused_until_something_changes(cache):
    tmp_path, calls = cache
    args = demo_args()
    first = calibration.load_or_measure(args, demo_model(args))
    again = calibration.load_or_measure(args, demo_model(args))
    assert (first["reused"], again["reused"]) == (False, True) and first["path"] == again["path"]
    assert again["pe_flops_per_s"] == FAKE["pe_flops_per_s"] and len(calls) == 1
    calibration.load_or_measure(args, demo_model(args), force=True)  # --recalibrate
    other = demo_args(hidden=128)  # another model: another calibration
    assert calibration.load_or_measure(other, demo_model(other))["path"] != first["path"]
    assert len(calls) == 3


def test_the_calibration_runs_on_conversations_the_demo_never_sees(cache):
    _, calls = cache
    args = demo_args(seed=7)
    calibration.load_or_measure(args, demo_model(args))
    assert calls == [7 + calibration.CALIBRATION_SEED]


@pytest.mark.parametrize("damage", ["garbage", "other key", "zero rate"])
def test_a_bad_cache_file_is_measured_again(cache, damage):
    tmp_path, calls = cache
    args = demo_args()
    path = calibration.load_or_measure(args, demo_model(args))["path"]
    doc = json.load(open(path))
    if damage == "garbage":
        open(path, "w").write("{not json")
    else:
        if damage == "other key":
            doc["key"]["agents"] = 99
        else:
            doc["tpot_s"] = 0
        json.dump(doc, open(path, "w"))
    assert calibration.load_or_measure(args, demo_model(args))["reused"] is False
    assert len(calls) == 2


def test_prediction_reads_only_the_calibration():
    """Same calibration, same prediction; DualPath's extra read bandwidth shows where the
    storage NIC is the bottleneck."""
    args = demo_args(snic_mbps=0.5)
    cfg = demo_model(args)
    one = predict(args, cfg, FAKE, ["basic", "dualpath", "oracle"])
    assert one == predict(args, cfg, FAKE, ["basic", "dualpath", "oracle"])
    assert one["oracle"] > one["dualpath"] > one["basic"] > 0
