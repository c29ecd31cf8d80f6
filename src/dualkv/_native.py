"""Loads the native core with an error that says how to build it when it is missing."""
try:
    from dualkv import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on a broken or unbuilt checkout
    raise ImportError(
        "dualkv's native module dualkv._C is not built. From the repository root run "
        "`make build` (or `pip install --no-build-isolation -e .`)."
    ) from exc

C = _C
