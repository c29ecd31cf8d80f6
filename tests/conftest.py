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
