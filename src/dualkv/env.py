"""The one place that reads environment variables (prefix DUALKV_). C++ never reads them."""
import os


def get_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"DUALKV_{name}", default)


def get_int(name: str, default: int) -> int:
    value = get_str(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"DUALKV_{name}={value!r} is not an integer") from exc


def get_bool(name: str, default: bool = False) -> bool:
    value = get_str(name)
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes", "on")
