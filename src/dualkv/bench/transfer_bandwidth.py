"""Bandwidth rows of `dualkv bench transfer`: batches of Layer Blocks put/get between two
agents, beside `ucx_perftest` of the same operation (`ucp_put_bw` for put, `ucp_get` for
get) and block size.

Two buffer patterns, because the reference moves one buffer over and over (cache-resident up
to the cache size): "reuse" does the same (every descriptor at offset 0), "random" moves
random slots of a 256 MiB region, the KV-cache case, mostly out of cache. Each figure and the
reference are measured --reps times, alternated so that load on a shared host hits both
alike, and the medians are reported with every run."""
from __future__ import annotations

import statistics
import time

import numpy as np

from dualkv.bench import ucx_perftest
from dualkv.bench.report import Report, with_reference

KIB, MIB = 1024, 1024 * 1024
REGION_BYTES = 256 * MIB  # per side; larger batches reuse slots
PERFTEST_TEST = {"put": "ucp_put_bw", "get": "ucp_get"}  # perftest's test of the same op


def slot_offsets(block: int, batch: int, rng, pattern: str) -> np.ndarray:
    if pattern == "reuse":  # ucx_perftest's pattern: one buffer, the same bytes every time
        return np.zeros(batch, np.int64)
    num_slots = max(1, REGION_BYTES // block)
    return rng.choice(num_slots, batch, replace=batch > num_slots).astype(np.int64) * block


def bandwidth(pair, block: int, batch: int, is_get: bool, seconds: float, pattern: str) -> float:
    """GB/s of batches of `batch` Layer Blocks, up to 4 batches in flight (over shared memory
    a batch of UCX-allocated memory completes inside the submitting call)."""
    rng = np.random.default_rng(block + batch)
    descs = [(slot_offsets(block, batch, rng, pattern), slot_offsets(block, batch, rng, pattern))
             for _ in range(8)]
    lengths = np.full(batch, block, np.int64)
    submit = pair.a.get if is_get else pair.a.put
    inflight, moved, i = [], 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or i < 8:
        loc, rem = descs[i % 8]
        inflight.append(submit(pair.peer_ab, pair.ra, pair.rb.id, loc, rem, lengths))
        i += 1
        if len(inflight) == 4:
            h = inflight.pop(0)
            pair.a.wait(h, 30)
            pair.a.release(h)
            moved += block * batch
    for h in inflight:
        pair.a.wait(h, 30)
        pair.a.release(h)
        moved += block * batch
    return moved / (time.perf_counter() - start) / 1e9


def bandwidth_rows(report: Report, args, pair) -> None:
    points = [(op, batch, pattern) for op in args.ops for batch in args.batches
              for pattern in args.patterns]
    for size_kib in args.sizes_kib:
        block = size_kib * KIB
        refs, runs = {op: [] for op in args.ops}, {p: [] for p in points}
        for rep in range(args.reps):
            def reference():
                for op in args.ops:  # the same operation on both sides: put vs put, get vs get
                    ref = ucx_perftest.reference(PERFTEST_TEST[op], block, args.tls,
                                                 args.seconds)
                    refs[op].append(ref and ref["bw_gbps"])

            if rep % 2 == 0:  # perftest first in even repetitions, after dualkv in odd ones
                reference()
            for op, batch, pattern in points:
                runs[(op, batch, pattern)].append(
                    bandwidth(pair, block, batch, op == "get", args.seconds, pattern))
            if rep % 2 == 1:
                reference()
        for (op, batch, pattern), gbps in runs.items():
            ref_gbps = statistics.median(refs[op]) if None not in refs[op] else None
            row = {"test": "bandwidth", "op": op, "block_bytes": block, "batch": batch,
                   "pattern": pattern, "tls": args.tls or "default",
                   "gbps": statistics.median(gbps), "runs_gbps": [round(g, 2) for g in gbps],
                   "ref_runs_gbps": [g if g is None else round(g, 2) for g in refs[op]]}
            report.add(with_reference(row, "gbps", f"ucx_perftest {PERFTEST_TEST[op]}",
                                      ref_gbps))
