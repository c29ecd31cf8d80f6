"""The examples run as a user runs them, in their own process, and say they succeeded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args):
    env = dict(os.environ)
    src = str(EXAMPLES.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_store_roundtrip(tmp_path):
    done = run_example("store_roundtrip.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "6 of 9 blocks stored" in done.stdout and "loaded and verified 6 blocks" in done.stdout


def test_layer_streaming_between_two_processes():
    pytest.importorskip("zmq")
    done = run_example("layer_streaming.py")
    assert done.returncode == 0, done.stderr
    assert "received 6 blocks layer by layer (8 layers" in done.stdout
    assert "every byte as stored" in done.stdout


def test_schedule_reads_splits_reads_under_dualpath_only():
    done = run_example("schedule_reads.py")
    assert done.returncode == 0, done.stderr
    share = {line.split()[0]: int(line.split("decode nodes read ")[1].rstrip("%)"))
             for line in done.stdout.splitlines()}
    assert share["basic"] == 0 and 30 <= share["dualpath"] <= 70


def test_every_example_is_tested():
    tested = {"store_roundtrip.py", "layer_streaming.py", "schedule_reads.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
