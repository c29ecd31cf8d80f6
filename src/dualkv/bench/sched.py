"""Scheduler decision cost at paper scale (48P96D, 8 GPUs a node): microseconds per request
for the inter-engine choice (submit + PE fetch + DE fetch + read side) and for intra-engine
batching. Engines report loads drawn below beta / HBM, as a busy cluster would."""
import argparse
import random
import time
from collections import deque

from dualkv.bench.report import Report
from dualkv.sched import (EngineReport, GroupReport, GroupSpec, PrefillBatcher, Request,
                          Scheduler, SchedulerConfig)
from dualkv.sim.config import get_preset
from dualkv.sim.workload import agentic


def inter_cost(policy: str, num_pe: int, num_de: int, num_requests: int, seed: int) -> float:
    g, rng = 8, random.Random(seed)
    pe = [GroupSpec(n, n, tuple(range(n * g, n * g + g))) for n in range(num_pe)]
    de = [GroupSpec(n, n, tuple(range(n * g, n * g + g))) for n in range(num_pe, num_pe + num_de)]
    beta, hbm = 7e5, 8e5
    sched = Scheduler(SchedulerConfig(policy, alpha_tokens=1.5e6, beta_tokens=beta), pe, de)
    work = agentic("48k", 2000, seed)
    prompt, hit, gen = work.prompt.tolist(), work.hit.tolist(), work.gen.tolist()
    reports = []
    for _ in range(64):  # pre-drawn loads so the timed loop measures the scheduler only
        reports.append(([rng.randrange(int(beta)) for _ in range(g)], [rng.randrange(40) for _ in range(g)],
                        [rng.uniform(0, hbm) for _ in range(g)], rng.randrange(int(3e6))))
    groups = [(True, s) for s in pe] + [(False, s) for s in de]
    placed, spent, i, k = 0, 0.0, 0, 0
    while placed < num_requests:
        batch = [Request(j, prompt[j % len(prompt)], hit[j % len(prompt)], gen[j % len(prompt)])
                 for j in range(i, i + 2000)]
        i += len(batch)
        start = time.perf_counter()
        for r in batch:
            sched.submit(r)
        spent += time.perf_counter() - start
        while sched.num_waiting or any(sched.de_private.values()) or sched.de_queue:
            is_pe, spec = groups[k % len(groups)]
            tok, seq, free, read_q = reports[k % len(reports)]
            k += 1
            engines = [EngineReport(e, seq[n], tok[n], free[n]) for n, e in enumerate(spec.engine_ids)]
            report = GroupReport(spec.group_id, read_q, engines)
            start = time.perf_counter()
            result = (sched.fetch_for_pe_group if is_pe else sched.fetch_for_de_group)(report)
            spent += time.perf_counter() - start
            placed += len(result.placed)
    return spent / placed * 1e6


def intra_cost(num_requests: int, seed: int) -> float:
    model = get_preset("ds660b")
    from dualkv.sched import FlopCurve

    batcher = PrefillBatcher(model.attention, FlopCurve.linear(model.pe_flops_per_s), 0.3)
    work = agentic("48k", 500, seed)
    queue = deque(Request(j, int(p), int(h), int(g))
                  for j, (p, h, g) in enumerate(zip(work.prompt[:num_requests], work.hit, work.gen)))
    n = len(queue)
    start = time.perf_counter()
    while queue:
        batcher.next_batch(queue)
    return (time.perf_counter() - start) / n * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench sched", description=__doc__.splitlines()[0])
    parser.add_argument("--pe", type=int, default=48)
    parser.add_argument("--de", type=int, default=96)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--policy", default="dualpath,basic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = Report("bench sched", args.json)
    for policy in args.policy.split(","):
        us = inter_cost(policy, args.pe, args.de, args.requests, args.seed)
        report.add({"op": "inter_engine", "policy": policy, "pe_nodes": args.pe, "de_nodes": args.de,
                    "requests": args.requests, "us_per_request": us})
    report.add({"op": "intra_engine_batch", "policy": "quota_300ms", "requests": args.requests,
                "us_per_request": intra_cost(args.requests, args.seed)})
    report.finish()
    return 0
