"""make gpu-check and make test's torch on a machine without a GPU: nothing may read as a
pass. (On a CUDA machine `make gpu-check` itself is the check; see bench/RESULTS.md.)"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(has_cuda(), reason="this machine has a CUDA device: run make gpu-check")
def test_gpu_check_says_no_cuda_device_and_fails():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    done = subprocess.run([sys.executable, "-m", "dualkv.bench.gpu_check"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "nothing checked" in done.stderr
    assert "no CUDA device is present" in done.stderr or "CPU-only build" in done.stderr
    assert done.stdout == ""  # no JSON that a script could take for figures


def run_install_torch(tmp_path, cuda: str | None) -> str:
    """scripts/install_torch.py --dry-run with a torch package on the path that reports
    `cuda` as torch.version.cuda, the one attribute the decision reads."""
    pkg = tmp_path / "torch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import version\n")
    (pkg / "version.py").write_text(f"cuda = {cuda!r}\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "install_torch.py"),
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_test_keeps_a_cuda_torch(tmp_path):
    assert "keeping the installed CUDA build of torch (CUDA 12.8)" in \
        run_install_torch(tmp_path, "12.8")


def test_make_test_pins_the_cpu_torch_where_no_cuda_torch_exists(tmp_path):
    assert "install -q torch==2.13.0" in run_install_torch(tmp_path, None)
