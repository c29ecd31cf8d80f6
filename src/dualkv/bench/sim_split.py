"""Per-request read split vs the whole-request read side, in the simulator (issue 20, item 6).

For each model, P/D ratio and workload it runs the `dualpath` policy (each request's hit read
on the node with the shorter read queue) and the `split` policy (the same engine choice, the
hit cut between both nodes by their backlogs) on the same workload, and prints one row per
policy; the split's row names dualpath as its reference (`ref_<figure>`, `ratio`).

Workloads: `burst` (every agent at t = 0: the offline JCT), `online` (Poisson arrivals at
`--load` x the agents/s dualpath's burst run finished, agents / JCT, on the same cluster:
mean TTFT at a load the cluster carries). The ratios are
the skew: in 1P2D every request pairs the one PE node with one of two DE nodes, so the PE
node's queue runs ahead; in 2P1D the one DE node's does. `pe_gb_per_node` / `de_gb_per_node`
show which side read more.
"""
import argparse
import multiprocessing

from dualkv.bench.report import Report, with_reference
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline, run_online
from dualkv.sim.workload import agentic



def run_one(job: tuple) -> dict:
    """One (model, ratio, seed, policy) run; `aps` is the online rate (None: burst)."""
    model, pe, de, seed, policy, aps, args = job
    cfg = SimConfig(get_preset(model), policy, pe, de, gpus_per_node=args.gpus_per_node, seed=seed)
    if aps is None:
        row, _ = run_offline(cfg, agentic(args.maxlen, args.agents, seed))
    else:
        row, _ = run_online(cfg, args.maxlen, aps, args.max_s)
    pe_gb, de_gb = row["snic_node_gb"][:pe], row["snic_node_gb"][pe:]
    return {"model": model, "pd": f"{pe}P{de}D", "workload": "burst" if aps is None else "online",
            "policy": policy, "seed": seed, "maxlen": args.maxlen, "agents": row["agents"], "aps": row.get("aps"),
            "jct_s": row.get("jct_s"), "ttft_mean_s": row["ttft_mean_s"], "ttft_p99_s": row["ttft_p99_s"],
            "tpot_mean_ms": row["tpot_mean_ms"], "turns_done": row["turns_done"],
            "split_reads": row["split_reads"], "snic_bytes_max_avg": row["snic_bytes_max_avg"],
            "pe_gb_per_node": sum(pe_gb) / pe, "de_gb_per_node": sum(de_gb) / de}


def compare(rows: list[dict]) -> list[dict]:
    """The split's rows with dualpath's figure as the reference (offline: JCT, online: TTFT)."""
    base = {_case(r): r for r in rows if r["policy"] == "dualpath"}
    out = []
    for r in rows:
        if r["policy"] == "split":
            figure = "jct_s" if r["workload"] == "burst" else "ttft_mean_s"
            r = with_reference(r, figure, "dualpath", base[_case(r)][figure])
        out.append(r)
    return out


def _case(r: dict) -> tuple:
    return r["model"], r["pd"], r["workload"], r.get("seed", 0)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, ratio, workload): split / dualpath over the seeds (below 1: split is
    better), so a gain can be told from the run-to-run scatter of one seed."""
    ratios: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("reference") == "dualpath" and r["ratio"] is not None:
            ratios.setdefault(_case(r)[:3], []).append(r["ratio"])
    return [{"kind": "summary", "model": m, "pd": pd, "workload": w, "num_seeds": len(v),
             "ratio_mean": sum(v) / len(v), "ratio_min": min(v), "ratio_max": max(v),
             "num_split_better": sum(x < 1 for x in v)} for (m, pd, w), v in ratios.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench sim-split", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ds660b,ds27b,qwen32b")
    parser.add_argument("--ratios", default="1:2,2:3,1:1,3:2,2:1", help="comma list of P:D")
    parser.add_argument("--workloads", default="burst,online")
    parser.add_argument("--agents", type=int, default=128, help="burst: agents at t = 0")
    parser.add_argument("--load", type=float, default=0.5,
                        help="online: arrival rate as a share of dualpath's burst agents/s")
    parser.add_argument("--max-s", type=float, default=1800.0, help="online: simulated seconds")
    parser.add_argument("--maxlen", default="64k")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="simulator processes")
    parser.add_argument("--seeds", default="0", help="comma list: workload and arrival seeds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ratios = [tuple(int(x) for x in r.split(":")) for r in args.ratios.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    cases = [(m, pe, de, seed) for m in args.models.split(",") for pe, de in ratios for seed in seeds]
    policies = ("dualpath", "split")
    with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
        rows = pool.map(run_one, [(*c, p, None, args) for c in cases for p in policies])
        if "online" in args.workloads.split(","):  # the rate comes from the burst: run it first
            done = {_case(r)[:2] + (r["seed"],): r["agents"] / r["jct_s"] for r in rows
                    if r["policy"] == "dualpath"}
            rows += pool.map(run_one, [(m, pe, de, seed, p, args.load * done[(m, f"{pe}P{de}D", seed)], args)
                                       for m, pe, de, seed in cases for p in policies])
    if "burst" not in args.workloads.split(","):
        rows = [r for r in rows if r["workload"] != "burst"]
    report = Report("bench sim-split", args.json)
    rows = compare(rows)
    for row in rows + summarize(rows):
        report.add(row)
    report.finish()
    return 0
