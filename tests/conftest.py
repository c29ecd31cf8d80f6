import os

import pytest


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is present; the default run is CPU-only."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def block_root(tmp_path):
    """A fresh directory on the real disk (not tmpfs), where O_DIRECT works."""
    root = tmp_path / "blocks"
    root.mkdir()
    return str(root)


def _io_uring_reason():
    from dualkv._native import C

    state = C.probe_backends()["io_uring"]
    return None if state == "usable" else state


@pytest.fixture(params=["io_uring", "posix"])
def io_backend(request):
    """Each storage I/O backend; io_uring is skipped where this build or kernel lacks it."""
    if request.param == "io_uring":
        reason = _io_uring_reason()
        if reason:
            pytest.skip(f"io_uring {reason}")
    return request.param
