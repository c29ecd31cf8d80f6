"""`dualkv bench transfer`: UCX Layer Block put/get bandwidth and per-layer notice latency
beside ucx_perftest, model-message latency under a saturating kv stream, and token-bucket
accuracy. Two agents in one process over loopback (shared memory unless --tls says else).
With --peers nixl,mooncake: dualkv beside NIXL and Mooncake Transfer Engine, every system as
two processes (dualkv.bench.transfer_peers)."""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from dualkv.bench import transfer_peers, ucx_perftest
from dualkv.bench.peer_process import ProcessPair
from dualkv.bench.report import Report, with_reference
from dualkv.bench.transfer_bandwidth import REGION_BYTES, bandwidth_rows
from dualkv.bench.transfer_latency import notice_latency_us
from dualkv.transfer.traffic import TrafficConfig, TrafficManager, measure_rate, open_bucket
from dualkv.transfer import Agent, TransferConfig

KIB, MIB = 1024, 1024 * 1024


class Pair:
    """Two agents of one class joined both ways, each with one registered region."""

    def __init__(self, cls: str, tls: str | None, region_bytes: int):
        cfg = TransferConfig(traffic_class=cls, tls=tls)
        self.a, self.b = Agent(cfg), Agent(cfg)
        self.ra, self.buf_a = self.a.alloc(region_bytes)  # one-sided over shared memory
        self.rb, self.buf_b = self.b.alloc(region_bytes)
        self.buf_a[:] = 1
        self.buf_b[:] = 0
        self.peer_ab = self.a.connect(self.b.local_info())
        self.peer_ba = self.b.connect(self.a.local_info())

    def close(self):
        self.a.close()
        self.b.close()


def model_latency_us(submit, wait, model: Pair, iters: int) -> float:
    times = []
    for i in range(iters):
        start = time.perf_counter()
        wait(submit(model.peer_ab, model.ra, model.rb.id, [0], [0], [4 * KIB], request_id=9,
                    layer=i), 10)
        times.append(time.perf_counter() - start)
    model.b.clear_notices(9)
    return statistics.median(times) * 1e6


def kv_stream(submit, wait, kv: Pair, stop: threading.Event):
    """Two 64 MiB kv jobs in flight until stopped."""
    pending = []
    while not stop.is_set() or pending:
        if not stop.is_set() and len(pending) < 2:
            pending.append(submit(kv.peer_ab, kv.ra, kv.rb.id, [0], [0], [64 * MIB]))
        else:
            wait(pending.pop(0), 30)


def priority_row(report, path, model_io, kv_io, kv: Pair, model: Pair, iters, extra):
    idle = model_latency_us(*model_io, model, iters)
    stop = threading.Event()
    thread = threading.Thread(target=kv_stream, args=(*kv_io, kv, stop))
    thread.start()
    time.sleep(0.05)
    busy = model_latency_us(*model_io, model, iters)
    stop.set()
    thread.join()
    report.add({"test": "priority", "path": path, "model_bytes": 4 * KIB, **extra,
                "idle_p50_us": idle, "busy_p50_us": busy, "increase": busy / idle - 1})


def priority(report: Report, args, kv: Pair, model: Pair):
    """Model-message latency under a saturating kv stream: through the traffic manager, and
    with both classes posted straight to their agents (separate UCP contexts only)."""
    cfg = TrafficConfig(node=f"bench{os.getpid()}", chunk_bytes=args.chunk_kib * KIB)
    with TrafficManager(cfg, kv_agent=kv.a, model_agent=model.a) as tm:
        def model_put(*a, **kw):
            return tm.put(*a, cls="model", **kw)

        priority_row(report, "traffic_manager", (model_put, tm.wait), (tm.put, tm.wait), kv,
                     model, args.iters, {"chunk_bytes": cfg.chunk_bytes})
        for bucket in (tm.snic, tm.cnic):
            os.unlink(bucket.path)  # this bench's node only
    priority_row(report, "direct", (model.a.put, model.a.wait), (kv.a.put, kv.a.wait), kv, model,
                 args.iters, {"chunk_bytes": 64 * MIB})


def token_buckets(report: Report, args):
    node = f"bench{os.getpid()}"
    for gbps in (0.5, 2.0, 8.0):
        burst = int(gbps * 1e9 * args.burst_ms / 1e3)
        bucket = open_bucket(node, "snic", gbps, burst_bytes=burst)
        rate = measure_rate(bucket, int(gbps * 1e9 * 0.25), 256 * KIB)
        report.add({"test": "token_bucket", "nic": "snic", "cap_gbps": gbps, "burst_bytes": burst,
                    "measured_gbps": rate / 1e9, "ratio": rate / 1e9 / gbps})
        os.unlink(bucket.path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="dualkv bench transfer", description=__doc__)
    p.add_argument("--sizes-kib", type=int, nargs="+", default=[16, 256, 1024, 4096, 16384])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--ops", nargs="+", default=["put", "get"], choices=["put", "get"])
    p.add_argument("--seconds", type=float, default=0.4, help="per bandwidth point")
    p.add_argument("--iters", type=int, default=400, help="latency samples per repetition")
    p.add_argument("--reps", type=int, default=3,
                   help="repetitions of every figure and of its reference; medians reported")
    p.add_argument("--pin", choices=["auto", "on", "off"], default="auto",
                   help="latency: pin the two processes (ours and perftest's) to two CPUs; "
                        "auto = when two are available")
    p.add_argument("--patterns", nargs="+", default=["random", "reuse"],
                   choices=["random", "reuse"], help="bandwidth buffer patterns")
    p.add_argument("--chunk-kib", type=int, default=512)
    p.add_argument("--burst-ms", type=float, default=4.0, help="token bucket burst, in ms of cap")
    p.add_argument("--tls", default=None, help="UCX_TLS for both dualkv and ucx_perftest")
    p.add_argument("--skip", nargs="*", default=[], choices=["bw", "lat", "priority", "bucket"])
    p.add_argument("--json", action="store_true")
    transfer_peers.add_arguments(p)
    args = p.parse_args(argv)
    if args.peers:
        try:
            transfer_peers.parse_peers(args.peers)
        except ValueError as e:
            p.error(str(e))
    report = Report("bench transfer", args.json)
    kv = Pair("kv", args.tls, REGION_BYTES)
    try:
        if "bw" not in args.skip:  # the peer in its own process, as perftest's server is
            bw_pair = ProcessPair("kv", args.tls, REGION_BYTES)
            try:
                bandwidth_rows(report, args, bw_pair)
            finally:
                bw_pair.close()
        if "lat" not in args.skip:
            latency_row(report, args)
        if "priority" not in args.skip:
            model = Pair("model", args.tls, MIB)
            priority(report, args, kv, model)
            model.close()
    finally:
        kv.close()
    if "bucket" not in args.skip:
        token_buckets(report, args)
    if args.peers:
        transfer_peers.peer_rows(report, args)
    report.finish()
    return 0


def latency_row(report: Report, args):
    """Both figures are one-way: half the round trip of a 64 KiB ping-pong between two
    processes (perftest: put + poll on the buffer's last byte; dualkv: put + notice +
    wait_notice, through the Python API per call, through a prepared per-layer put, and
    driven from C++), each the median over --reps
    runs, alternated so that load hits all three alike; with --pin both tools' two processes
    are pinned to CPUs 0 and 1."""
    cpus = _pin_cpus(args.pin)
    runs = {"python": [], "prepared": [], "native": []}
    refs = []
    for _ in range(args.reps):
        ref = ucx_perftest.reference("ucp_put_lat", 64 * KIB, args.tls, cpus=cpus)
        refs.append(ref and ref["p50_us"])
        for api in runs:
            runs[api] += notice_latency_us(64 * KIB, args.iters, 1, args.tls, api, cpus)
    ref_p50 = statistics.median(refs) if None not in refs else None
    for api, ours in runs.items():
        row = {"test": "notice_latency", "api": api, "block_bytes": 64 * KIB,
               "pinned": cpus is not None, "p50_us": statistics.median(ours),
               "runs_us": [round(x, 2) for x in ours],
               "ref_runs_us": [x if x is None else round(x, 2) for x in refs]}
        report.add(with_reference(row, "p50_us", "ucx_perftest ucp_put_lat", ref_p50))


def _pin_cpus(pin: str) -> tuple[int, int] | None:
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "off" or (pin == "auto" and len(allowed) < 2):
        return None
    if len(allowed) < 2:
        raise SystemExit("--pin on needs two CPUs")
    return allowed[0], allowed[1]
