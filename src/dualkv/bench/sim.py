"""Simulator speed at paper scale: wall time of an offline run (default 48P96D, 48,000 agents,
48K set, about 5 M turns), plus simulated turns per wall second."""
import argparse
import os
import time

from dualkv.bench.report import Report
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench sim", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ds660b")
    parser.add_argument("--pe", type=int, default=48)
    parser.add_argument("--de", type=int, default=96)
    parser.add_argument("--agents", type=int, default=48_000)
    parser.add_argument("--maxlen", default="48k")
    parser.add_argument("--policy", default="dualpath")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = Report("bench sim", args.json)
    start = time.perf_counter()
    work = agentic(args.maxlen, args.agents)
    gen_s = time.perf_counter() - start
    for policy in args.policy.split(","):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        row, _ = run_offline(SimConfig(get_preset(args.model), policy, args.pe, args.de), work)
        wall = time.perf_counter() - start
        report.add({"policy": policy, "pe_nodes": args.pe, "de_nodes": args.de, "agents": args.agents,
                    "maxlen": args.maxlen, "turns": work.num_turns, "workload_gen_s": gen_s,
                    "wall_s": wall, "turns_per_wall_s": work.num_turns / wall, "jct_s": row["jct_s"],
                    "loadavg_1m_at_start": load, "cpus": os.cpu_count()})
    report.finish()
    return 0
