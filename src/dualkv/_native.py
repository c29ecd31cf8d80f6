"""Loads the native core with an error that says how to build it when it is missing.

UCX: where the `libucx-cu12` wheel is installed (`pip install -e .[ucx]`), its UCX (1.22) is
loaded first, so dualkv._C binds to it instead of the system's (Debian's 1.13). UCX keeps its
ABI within 1.x, so the module built against the system headers runs on either. UCX 1.13 has
no tcp protocol for one-sided puts: every put over TCP is "software emulation" (ucp AM
messages applied by the target's progress thread); on 1.22 it is tcp's put_zcopy.
DUALKV_SYSTEM_UCX=1 keeps the system UCX."""
import os

from dualkv import env


def _load_wheel_ucx() -> None:
    if env.get_str("SYSTEM_UCX"):
        return
    try:
        import libucx
    except ImportError:
        return
    # UCX 1.22 logs to stdout unless told otherwise (1.13: stderr); stdout carries the JSON of
    # every --json command. Read by libucs when it loads, so set before it does.
    os.environ.setdefault("UCX_LOG_FILE", "stderr")
    libucx.load_library()  # dlopen by path; _C's libucp.so.0 then resolves to it by soname


_load_wheel_ucx()
try:
    from dualkv import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on a broken or unbuilt checkout
    raise ImportError(
        "dualkv's native module dualkv._C is not built. From the repository root run "
        "`make build` (or `pip install --no-build-isolation -e .`)."
    ) from exc

C = _C
