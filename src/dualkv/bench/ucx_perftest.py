"""Runs UCX's own `ucx_perftest` (server + client on loopback) as the reference figure for
`dualkv bench transfer`, with the same UCX_TLS and message size."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

MIB = 1024 * 1024


def available() -> bool:
    return shutil.which("ucx_perftest") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(test: str, size: int, iters: int, tls: str | None = None, timeout: float = 120,
        cpus: tuple[int, int] | None = None) -> dict:
    """`test` is ucp_put_bw / ucp_put_lat / ucp_get; returns the Final row's whole-run figures
    (`parse`; GB/s = 1e9 bytes/s; ucx_perftest prints MiB/s). `cpus`
    pins (client, server) to one CPU each, as `dualkv bench transfer --pin` does its own."""
    client_pin, server_pin = (["-c", str(cpus[0])], ["-c", str(cpus[1])]) if cpus else ([], [])
    env = dict(os.environ)
    if tls:
        env["UCX_TLS"] = tls
    port = str(_free_port())
    server = subprocess.Popen(["ucx_perftest", "-p", port] + server_pin, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # the server must listen before the client connects
        out = subprocess.run(["ucx_perftest", "127.0.0.1", "-p", port, "-t", test, "-s", str(size),
                              "-n", str(iters)] + client_pin, env=env, capture_output=True, text=True,
                             timeout=timeout).stdout
    finally:
        server.kill()
        server.wait()
    return parse(out, test)


def column_names(lines: list[str]) -> list[str]:
    """Names of the result columns from perftest's own header: the group a column sits under
    (e.g. "latency (usec)", "overhead (usec)", "bandwidth (MB/s)") and its own name
    ("50.0%ile", "average" = the last report interval, "overall" = the whole run), e.g.
    "bandwidth (MB/s) overall". The group is found by the column's position under the group
    line, so a group renamed or reordered by another UCX version is still read by name."""
    rows = [line for line in lines if line.startswith("|")]
    stage = next((i for i, line in enumerate(rows) if "Stage" in line), None)
    if stage is None or stage == 0:
        raise ValueError("ucx_perftest output has no column header")
    groups, names = _cells(rows[stage - 1]), _cells(rows[stage])
    columns = []
    for start, name in names:
        group = [text for begin, text in groups if begin <= start][-1]
        columns.append(f"{group} {name}".strip())
    return columns


def _cells(line: str) -> list[tuple[int, str]]:
    """(start column, stripped text) of each |-separated cell of a header line."""
    bars = [i for i, c in enumerate(line) if c == "|"]
    return [(a, line[a + 1:b].strip()) for a, b in zip(bars, bars[1:])]


def parse(out: str, test: str = "ucx_perftest") -> dict:
    """The whole-run figures of perftest's `Final:` row, each column found by its header name:
    {iterations, p50_us, avg_us, bw_gbps, columns}. avg_us and bw_gbps are the "overall"
    columns (the whole run); the "average" columns beside them cover only the last report
    interval. p50_us is perftest's percentile over its last 2048 samples (TIMING_QUEUE_SIZE in
    libperf), i.e. the whole run when it has at most 2048 iterations. The time group is
    "latency (usec)" in latency and get tests and "overhead (usec)" in put_bw: either is read."""
    lines = out.splitlines()
    final = [line for line in lines if line.startswith("Final:")]
    if not final:
        raise RuntimeError(f"ucx_perftest {test} printed no result:\n{out[-2000:]}")
    names = column_names(lines)
    values = final[-1].split()[1:]  # "Final:" stands in the Stage column
    if len(values) != len(names) - 1:
        raise RuntimeError(f"ucx_perftest {test}: Final row has {len(values)} values for "
                           f"{len(names) - 1} columns {names[1:]}")
    row = dict(zip(names[1:], map(float, values)))
    time_group = next(n.rsplit(" ", 1)[0] for n in names if n.endswith("%ile"))
    return {"iterations": int(row["# iterations"]),
            "p50_us": row[f"{time_group} 50.0%ile"],
            "avg_us": row[f"{time_group} overall"],
            "bw_gbps": row["bandwidth (MB/s) overall"] * MIB / 1e9,
            "columns": row}


def reference(test: str, size: int, tls: str | None = None, seconds: float = 0.3,
              cpus: tuple[int, int] | None = None) -> dict | None:
    """`run` as `dualkv bench transfer` uses it, or None without the tool. Bandwidth runs last
    about `seconds` at 8 GB/s, like the dualkv figure beside them (a run of a few
    milliseconds swings with every scheduler hiccup on a shared host)."""
    if not available():
        return None
    iters = 2000 if test.endswith("lat") else max(50, min(200000, int(seconds * 8e9 / size)))
    return run(test, size, iters, tls, cpus=cpus)
