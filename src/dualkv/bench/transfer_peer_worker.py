"""One transfer system measured between two processes: `python -m
dualkv.bench.transfer_peer_worker --system nixl|mooncake|dualkv ...` is the initiator; it starts
the target as its own child (`--role target`) and talks to it in JSON lines over the child's
stdin/stdout. Both register one region of --region-mib of anonymous mmap memory, so every
system moves the same kind of memory. The initiator prints one JSON object: {"rows": [...]}.

The same workload for every system (one module, so no system gets a different loop):
- bandwidth: for each message size, writes of random, non-adjacent slots on both sides (no two
  chosen slots touch, so no message extends the previous one into a contiguous copy), batched
  to ~32 MiB, two batches in flight, for --seconds;
- layers: --num-layers writes of --layer-kib each with a notice per layer, posted back to back
  as an engine streams its layers; the span runs from the first post to the moment the
  target has seen the last layer's notice (CLOCK_MONOTONIC is one clock for both processes).
CPU seconds are each process' own (all its threads), read before and after each span.

It imports only the standard library, numpy and the backend's own module, so it runs in the
peers' venv (scripts/venv.sh peers) without dualkv's native build."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

BACKENDS = {"dualkv": "dualkv.bench.transfer_peer_dualkv",
            "nixl": "dualkv.bench.transfer_peer_nixl",
            "mooncake": "dualkv.bench.transfer_peer_mooncake"}
KIB, MIB = 1024, 1024 * 1024
BATCH_BYTES = 32 * MIB


def backend(args, role: str):
    return importlib.import_module(BACKENDS[args.system]).Backend(role, args.region_mib * MIB,
                                                                  args.tls)


def nonadjacent_slots(num_slots: int, count: int, rng) -> np.ndarray:
    """`count` distinct slot indices, no two neighbours: a random subset of the even slots
    shifted by a random 0/1 per run (the gaps stay >= one slot)."""
    evens = np.arange(0, num_slots - 1, 2)
    picked = rng.choice(evens, min(count, len(evens)), replace=False)
    return picked + rng.integers(0, 2)


def shuffled_slots(num_slots: int, count: int, rng) -> np.ndarray:
    """`count` distinct slots in an order where no slot follows its neighbour: 61 layers of
    2 MiB fill most of a 128 MiB region, so they cannot all be apart, but no layer continues
    where the previous one ended."""
    for _ in range(100):
        slots = rng.permutation(num_slots)[:count]
        if count < 2 or (np.abs(np.diff(slots)) > 1).all():
            return slots
    raise RuntimeError(f"no order of {count} of {num_slots} slots without neighbours found")


def batches(size: int, region_bytes: int, rng, num_sets: int = 4):
    num_slots = region_bytes // size
    count = max(1, min(BATCH_BYTES // size, num_slots // 2))
    return [(nonadjacent_slots(num_slots, count, rng) * size,
             nonadjacent_slots(num_slots, count, rng) * size) for _ in range(num_sets)]


class TargetLink:
    """The target child process and its JSON-line channel."""

    def __init__(self, argv: list[str], timeout_s: float):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.timeout_s = timeout_s

    def ask(self, **cmd) -> dict:
        if cmd:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the target answers within its own deadlines
        if not line:
            raise RuntimeError(f"target exited (code {self.proc.wait(self.timeout_s)}) "
                               f"while answering {cmd.get('cmd', 'hello')}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"target: {reply['error']}")
        return reply

    def close(self):
        try:
            if self.proc.poll() is None:  # a target that died already told its reason
                self.ask(cmd="quit")
        finally:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(self.timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def measure_span(link: TargetLink, fn) -> tuple[float, float, float]:
    """(seconds, initiator CPU s, target CPU s) of fn(); fn returns its own end time or None."""
    target_cpu = link.ask(cmd="cpu")["cpu_s"]
    cpu, start = time.process_time(), time.monotonic()
    end = fn() or time.monotonic()
    cpu = time.process_time() - cpu
    return end - start, cpu, link.ask(cmd="cpu")["cpu_s"] - target_cpu


def bandwidth_row(link, be, size: int, seconds: float, rng) -> dict:
    sets = batches(size, be.region_bytes, rng)
    posts = [be.prepare(loc, rem, size) for loc, rem in sets]
    for post in posts:  # warm-up: connections, registration caches, first-touch faults
        be.wait(post(), 60)
    moved = [0]

    def run():
        inflight, i, start = [], 0, time.monotonic()
        while time.monotonic() - start < seconds or i < 4:
            inflight.append((posts[i % len(posts)](), posts[i % len(posts)].num_bytes))
            i += 1
            if len(inflight) == 2:
                handle, num_bytes = inflight.pop(0)
                be.wait(handle, 60)
                moved[0] += num_bytes
        for handle, num_bytes in inflight:
            be.wait(handle, 60)
            moved[0] += num_bytes

    span, cpu, tcpu = measure_span(link, run)
    check_landed(link, sets[0][1], size)
    return _row("bandwidth", size, moved[0], span, cpu, tcpu, batch=posts[0].num_descs)


def check_landed(link: TargetLink, remote_offsets, size: int) -> None:
    """The target's slots hold the initiator's bytes (1s on a region that started as 0s)."""
    if not link.ask(cmd="check", offsets=[int(o) for o in remote_offsets], size=size)["ok"]:
        raise RuntimeError(f"bytes written in {size}-byte messages did not land at the target")


def layers_row(link, be, num_layers: int, layer_bytes: int, reps: int, rng) -> dict:
    num_slots = be.region_bytes // layer_bytes
    rows = []
    for rep in range(reps + 1):  # the first is warm-up
        if num_slots < num_layers:
            raise SystemExit(f"{num_layers} layers of {layer_bytes} bytes do not fit a region "
                             f"of {be.region_bytes} bytes")
        loc = shuffled_slots(num_slots, num_layers, rng) * layer_bytes
        rem = shuffled_slots(num_slots, num_layers, rng) * layer_bytes
        posts = be.prepare_layers(loc, rem, layer_bytes, rep)
        link.ask(cmd="expect", request=rep, num_layers=num_layers)

        def run():
            for handle in [post() for post in posts]:  # all posted before any wait
                be.wait(handle, 60)
            return link.ask(cmd="layers", request=rep)["last_notice_t"]

        span, cpu, tcpu = measure_span(link, run)
        if rep:
            rows.append(_row("layers", layer_bytes, num_layers * layer_bytes, span, cpu, tcpu,
                             num_layers=num_layers))
    return min(rows, key=lambda r: abs(r["gbps"] - np.median([x["gbps"] for x in rows])))


def _row(test, size, num_bytes, span, cpu, tcpu, **extra) -> dict:
    gb = num_bytes / 1e9
    return {"test": test, "block_bytes": size, **extra, "gbps": gb / span,
            "cpu_s_per_gb_initiator": cpu / gb, "cpu_s_per_gb_target": tcpu / gb}


def private_stdout():
    """The protocol's own stream: a copy of fd 1, with fd 1 itself pointed at stderr, so that
    whatever a transfer library prints cannot land inside a JSON line."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def serve_target(args) -> None:
    """Target loop: answers the initiator's commands until quit or end of input."""
    out = private_stdout()
    be = backend(args, "target")
    print(json.dumps({"info": be.local_info()}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = _target_command(be, cmd)
        except Exception as e:  # the initiator reports it; the target stays answerable
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=out, flush=True)
        if cmd["cmd"] == "quit":
            break
    be.close()


class LayerWatcher:
    """Waits for a request's layer notices on a thread of the target, from the moment the
    initiator announces it, and keeps the time the last one arrived."""

    def __init__(self, be, request: int, num_layers: int):
        self.outcome: list = []
        self.thread = threading.Thread(target=self._run, args=(be, request, num_layers),
                                       daemon=True)
        self.thread.start()

    def _run(self, be, request, num_layers):
        try:
            self.outcome.append(be.wait_layers(request, num_layers, 60))
        except Exception as e:  # handed to the command that asks for the result
            self.outcome.append(e)

    def result(self, timeout: float) -> float:
        self.thread.join(timeout)
        if not self.outcome:
            raise TimeoutError(f"layer notices still awaited after {timeout} s")
        if isinstance(self.outcome[0], Exception):
            raise self.outcome[0]
        return self.outcome[0]


_watchers: dict[int, LayerWatcher] = {}


def _target_command(be, cmd: dict) -> dict:
    name = cmd["cmd"]
    if name == "connect":
        be.connect(cmd["info"])
    elif name == "cpu":
        return {"cpu_s": time.process_time()}
    elif name == "check":
        mem, size = be.mem.array, cmd["size"]
        return {"ok": all(bool((mem[o:o + size] == 1).all()) for o in cmd["offsets"])}
    elif name == "expect":  # watch from now on, so the arrival time is not our reply's
        be.expect_layers(cmd["request"], cmd["num_layers"])
        watcher = LayerWatcher(be, cmd["request"], cmd["num_layers"])
        _watchers[cmd["request"]] = watcher
    elif name == "layers":
        return {"last_notice_t": _watchers.pop(cmd["request"]).result(60)}
    elif name != "quit":
        raise ValueError(f"unknown command {name}")
    return {"ok": True}


def run_initiator(args) -> dict:
    argv = [sys.executable, "-m", "dualkv.bench.transfer_peer_worker", *sys.argv[1:],
            "--role", "target"]
    link = TargetLink(argv, 30)
    try:
        info = link.ask()["info"]
        be = backend(args, "initiator")
        be.connect(info)
        link.ask(cmd="connect", info=be.local_info())
        rng = np.random.default_rng(args.seed)
        rows = [bandwidth_row(link, be, kib * KIB, args.seconds, rng) for kib in args.sizes_kib]
        if args.num_layers:
            rows.append(layers_row(link, be, args.num_layers, args.layer_kib * KIB,
                                   args.layer_reps, rng))
        be.close()
    finally:
        link.close()
    return {"rows": rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", required=True, choices=sorted(BACKENDS))
    p.add_argument("--role", default="initiator", choices=["initiator", "target"])
    p.add_argument("--tls", default="tcp", help="UCX_TLS for the UCX-based systems")
    p.add_argument("--region-mib", type=int, default=128)
    p.add_argument("--sizes-kib", type=int, nargs="*", default=[64, 256, 1024, 4096, 16384])
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--num-layers", type=int, default=61)
    p.add_argument("--layer-kib", type=int, default=2048)
    p.add_argument("--layer-reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "target":
        serve_target(args)
    else:
        out = private_stdout()
        print(json.dumps(run_initiator(args)), file=out, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Everything is closed and reported; skip the interpreter's teardown, where NIXL 1.5.1's
    # module destructors segfault now and then once its agent is gone.
    os._exit(code)
