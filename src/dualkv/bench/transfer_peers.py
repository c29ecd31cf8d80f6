"""`dualkv bench transfer --peers nixl,mooncake`: dualkv beside NIXL (UCX backend) and Mooncake
Transfer Engine (tcp), each system as two processes running one workload
(dualkv.bench.transfer_peer_worker), alternated inside each round: round r runs the systems in
an order rotated by r, so load on a shared host hits each alike. NIXL and Mooncake run in the
peers' venv (`scripts/venv.sh peers`), dualkv in this interpreter.

Rows (one per peer and figure): dualkv's median GB/s and the peer's (`ref_gbps`), `ratio` =
dualkv / peer of the medians, `round_ratios` the per-round paired ratios, and CPU seconds
per GB on both sides for both systems (lower is better; GB/s higher is better)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from dualkv import env
from dualkv.bench import transfer_protocols
from dualkv.bench.report import Report, with_reference

PEERS = ("nixl", "mooncake")
REPO_SRC = Path(__file__).resolve().parents[2]
CPU_FIGURES = ("cpu_s_per_gb_initiator", "cpu_s_per_gb_target")


def venvs_dir() -> Path:
    """Where scripts/venv.sh puts the venvs (DUALKV_VENVS, else the XDG cache)."""
    venvs = env.get_str("VENVS")
    if venvs:
        return Path(venvs)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dualkv" / "venvs"


def peer_python(system: str) -> tuple[str | None, str]:
    """(interpreter, why not) for one system: dualkv runs here, the peers in their venv."""
    if system == "dualkv":
        return sys.executable, ""
    python = venvs_dir() / "peers" / "bin" / "python"
    if not python.exists():
        return None, f"no peers venv at {python.parent.parent} (run scripts/venv.sh peers)"
    return str(python), ""


def parse_peers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise ValueError(f"--peers takes a comma-separated subset of {','.join(PEERS)}, "
                         f"got {text!r}")
    return names


def parse_worker_output(text: str) -> list[dict]:
    """The worker's rows: its last stdout line is one JSON object {"rows": [...]}."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("the transfer worker printed nothing")
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise RuntimeError(f"the transfer worker's last line is not JSON: {lines[-1][:200]!r}") \
            from e
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise RuntimeError("the transfer worker's JSON has no 'rows' list")
    return doc["rows"]


def run_worker(system: str, python: str, worker_args: list[str], timeout_s: float) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))
    argv = [python, "-m", "dualkv.bench.transfer_peer_worker", "--system", system, *worker_args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise RuntimeError(f"{system} worker exited with {proc.returncode}:\n{tail}")
    return parse_worker_output(proc.stdout)


def rotated(systems: list[str], round_index: int) -> list[str]:
    k = round_index % len(systems)
    return systems[k:] + systems[:k]


def key(row: dict) -> tuple:
    return row["test"], row["block_bytes"]


def paired_rows(runs: dict[str, list[list[dict]]], peer: str, tls: str) -> list[dict]:
    """Rows of dualkv against one peer from each round's rows of both."""
    ours = [{key(r): r for r in rows} for rows in runs["dualkv"]]
    theirs = [{key(r): r for r in rows} for rows in runs[peer]]
    out = []
    for k, first in ours[0].items():
        pairs = [(o[k], t[k]) for o, t in zip(ours, theirs) if k in o and k in t]
        if not pairs:
            continue
        row = {"test": f"peer_{k[0]}", "block_bytes": k[1], "tls": tls,
               **{f: first[f] for f in ("batch", "num_layers") if f in first},
               "higher_is_better": "gbps; cpu_s_per_gb_* lower",
               "gbps": statistics.median(o["gbps"] for o, _ in pairs),
               "runs_gbps": [round(o["gbps"], 3) for o, _ in pairs],
               "ref_runs_gbps": [round(t["gbps"], 3) for _, t in pairs],
               "round_ratios": [round(o["gbps"] / t["gbps"], 3) for o, t in pairs]}
        for f in CPU_FIGURES:
            row[f] = statistics.median(o[f] for o, _ in pairs)
            row[f"ref_{f}"] = statistics.median(t[f] for _, t in pairs)
        out.append(with_reference(row, "gbps", peer,
                                  statistics.median(t["gbps"] for _, t in pairs)))
    return out


def peer_rows(report: Report, args) -> None:
    """Runs dualkv and every peer for args.peer_rounds rounds and adds the paired rows."""
    tls = args.tls or "tcp"
    peers = parse_peers(args.peers)
    systems, skipped = ["dualkv"], {}
    for peer in peers:
        python, why = peer_python(peer)
        if peer == "mooncake" and tls != "tcp":
            python, why = None, "Mooncake Transfer Engine has no shared-memory transport"
        if python is None:
            skipped[peer] = why
        else:
            systems.append(peer)
    for peer, why in skipped.items():
        report.add({"test": "peer", "reference": peer, "tls": tls, "skipped": why})
    if len(systems) == 1:
        return
    proto = transfer_protocols.probe(None if tls == "default" else tls)
    report.add({"test": "ucx_put_protocol", "tls": tls, "ucx_version": proto["ucx_version"],
                "put_protocols": [" ".join(row) for row in proto["put_protocols"]]})
    worker_args = ["--tls", tls, "--region-mib", str(args.peer_region_mib),
                   "--seconds", str(args.seconds), "--num-layers", str(args.num_layers),
                   "--sizes-kib", *map(str, args.peer_sizes_kib)]
    runs: dict[str, list[list[dict]]] = {s: [] for s in systems}
    failures: dict[str, list[str]] = {s: [] for s in systems}
    for r in range(args.peer_rounds):
        for system in rotated(systems, r):
            runs[system].append(run_with_retries(system, worker_args + ["--seed", str(r)],
                                                 args.peer_timeout_s, failures[system]))
    for peer in systems[1:]:
        for row in paired_rows(runs, peer, tls):
            report.add(dict(row, failed_runs=len(failures["dualkv"]),
                            ref_failed_runs=len(failures[peer])))
    for system, errors in failures.items():
        for error in errors:
            print(f"bench transfer: a {system} run failed and was repeated: {error}",
                  file=sys.stderr)


def run_with_retries(system: str, worker_args: list[str], timeout_s: float,
                     failures: list[str], attempts: int = 3) -> list[dict]:
    """A run that crashed (NIXL 1.5.1 segfaults now and then) is repeated, and counted."""
    python, _ = peer_python(system)
    for attempt in range(attempts):
        try:
            return run_worker(system, python, worker_args, timeout_s)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failures.append(str(e).splitlines()[0])
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def add_arguments(p) -> None:
    p.add_argument("--peers", default=None,
                   help="comma-separated: compare with nixl and/or mooncake over --tls (tcp "
                        "when not given; two processes each; needs scripts/venv.sh peers)")
    p.add_argument("--peer-rounds", type=int, default=3)
    p.add_argument("--peer-sizes-kib", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    p.add_argument("--peer-region-mib", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=61, help="layer-streaming shape, 2 MiB each")
    p.add_argument("--peer-timeout-s", type=float, default=300.0)
