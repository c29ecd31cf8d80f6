"""The one output shape of every bench, sim and demo command (STYLE.md):
`{"command": ..., "machine": {...}, "results": [row, ...]}` with flat rows whose figures carry
their unit in the name, and `ref_<figure>` plus `ratio` where a reference was measured."""
import json
import os
import platform
import statistics
import sys
import time

from dualkv.errors import InvalidArgument


def machine() -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Figures whose unit is a time: smaller is better. Every other figure (GB/s, per second,
# ratios of throughput) is better larger.
_TIME_SUFFIXES = ("_s", "_ms", "_us", "_ns")


def is_higher_better(figure: str) -> bool:
    if figure.endswith("_per_s"):  # a rate (turns_per_s), not a time
        return True
    return not figure.endswith(_TIME_SUFFIXES)


def with_reference(row: dict, figure: str, reference: str, ref_value: float | None) -> dict:
    """Adds the reference's figure, `ratio` = dualkv / reference for `figure`, and whether a
    higher value of `figure` (hence of the ratio) is better."""
    row = dict(row, reference=reference)
    row[f"ref_{figure}"] = ref_value
    value = row.get(figure)
    row["ratio"] = (value / ref_value) if value and ref_value else None
    row["higher_is_better"] = is_higher_better(figure)
    return row


def ratio_of_rounds(ours: list[float], refs: list[float]) -> tuple[float, list[float]]:
    """The median of the per-round ratios ours[i] / refs[i], and those ratios. A round pairs a
    dualkv run with the reference run made next to it, so a drift of the machine between
    rounds (this virtual disk's speed moves by up to 3x within a minute) cancels out of each
    ratio; the ratio of the two medians does not pair anything."""
    if len(ours) != len(refs) or not ours:
        raise InvalidArgument(f"ratio_of_rounds needs as many dualkv figures as reference "
                              f"figures, at least one: got {len(ours)} and {len(refs)}")
    if any(r is None or r <= 0 for r in refs) or any(o is None or o < 0 for o in ours):
        raise InvalidArgument(f"ratio_of_rounds needs positive reference figures and "
                              f"non-negative dualkv figures: got {ours} and {refs}")
    ratios = [o / r for o, r in zip(ours, refs)]
    return statistics.median(ratios), ratios


def with_rounds(row: dict, figure: str, reference: str, ours: list[float],
                refs: list[float]) -> dict:
    """`with_reference` on the medians of paired rounds, plus every round's figures and ratio:
    `ratio_of_rounds` (the figure to read) and `ratios_of_rounds`, `runs_<figure>`,
    `ref_runs_<figure>` in round order."""
    row = with_reference(dict(row, **{figure: statistics.median(ours)}), figure, reference,
                         statistics.median(refs))
    row["ratio_of_rounds"], ratios = ratio_of_rounds(ours, refs)
    row["ratios_of_rounds"] = [round(r, 3) for r in ratios]
    row[f"runs_{figure}"] = [round(x, 4) for x in ours]
    row[f"ref_runs_{figure}"] = [round(x, 4) for x in refs]
    row["num_rounds"] = len(ours)
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
