"""The one output shape of every bench, sim and demo command (STYLE.md):
`{"command": ..., "machine": {...}, "results": [row, ...]}` with flat rows whose figures carry
their unit in the name, and `ref_<figure>` plus `ratio` where a reference was measured."""
import json
import os
import platform
import statistics
import sys
import time


def machine() -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def with_reference(row: dict, figure: str, reference: str, ref_value: float | None) -> dict:
    """Adds the reference's figure and dualkv / reference for `figure` to a row."""
    row = dict(row, reference=reference)
    row[f"ref_{figure}"] = ref_value
    value = row.get(figure)
    row["ratio"] = (value / ref_value) if value and ref_value else None
    return row


def median_time(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Report:
    """Collects rows; prints each as a line while running (unless JSON), then the document."""

    def __init__(self, command: str, as_json: bool, stream=None):
        self.command = command
        self.as_json = as_json
        self.rows: list[dict] = []
        self.stream = stream or sys.stdout

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if not self.as_json:
            print(format_row(row), file=self.stream, flush=True)

    def finish(self) -> dict:
        doc = {"command": self.command, "machine": machine(), "results": self.rows}
        if self.as_json:
            print(json.dumps(doc), file=self.stream)
        return doc


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_row(row: dict) -> str:
    return "  ".join(f"{key}={format_value(value)}" for key, value in row.items())


def format_table(rows, columns, width: int = 14) -> str:
    """A header line and one line per row of the chosen columns (a missing figure: None)."""
    lines = ["  ".join(f"{c:>{width}s}" for c in columns)]
    lines += ["  ".join(f"{format_value(row.get(c)):>{width}s}" for c in columns) for row in rows]
    return "\n".join(lines)
