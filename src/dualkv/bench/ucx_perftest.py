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
    """`test` is ucp_put_bw / ucp_put_lat / ucp_get; returns the Final row as
    {p50_us, avg_us, bw_gbps} (GB/s = 1e9 bytes/s; ucx_perftest prints MiB/s). `cpus`
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
    final = [line for line in out.splitlines() if line.startswith("Final:")]
    if not final:
        raise RuntimeError(f"ucx_perftest {test} printed no result:\n{out[-2000:]}")
    cols = final[-1].split()
    return {"p50_us": float(cols[2]), "avg_us": float(cols[3]),
            "bw_gbps": float(cols[5]) * MIB / 1e9}


def reference(test: str, size: int, tls: str | None = None, seconds: float = 0.3,
              cpus: tuple[int, int] | None = None) -> dict | None:
    """`run` as `dualkv bench transfer` uses it, or None without the tool. Bandwidth runs last
    about `seconds` at 8 GB/s, like the dualkv figure beside them (a run of a few
    milliseconds swings with every scheduler hiccup on a shared host)."""
    if not available():
        return None
    iters = 2000 if test.endswith("lat") else max(50, min(200000, int(seconds * 8e9 / size)))
    return run(test, size, iters, tls, cpus=cpus)
