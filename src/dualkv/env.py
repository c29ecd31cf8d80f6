"""The one place that reads environment variables (prefix DUALKV_). C++ never reads them."""
import os


def get_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"DUALKV_{name}", default)

