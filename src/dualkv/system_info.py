"""What this installation can do: compiled backends and what the machine allows at run time."""
import platform

from dualkv._native import C


def info() -> dict:
    """Backends compiled in and usable here, plus versions; `dualkv info` prints it."""
    build = dict(C.build_info)
    runtime = {}
    probe = getattr(C, "probe_backends", None)  # filled in by the storage and transfer parts
    if probe is not None:
        runtime = dict(probe())
    return {
        "version": _version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "build": build,
        "runtime": runtime,
        "torch": _torch_version(),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dualkv")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return f"{torch.__version__} (cuda {cuda})" if cuda else torch.__version__
