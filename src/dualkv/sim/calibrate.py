"""Fit the simulator's constants on the calibration set of paper.md (§12.2 64K rows, §13,
§16.6) and nothing else; print the fit against every calibration point.

    python -m dualkv.sim.calibrate --model ds660b --fit --table

Fitted: snic_tokens_per_s on Basic (storage bound, JCT ~ 1/rate) and pe_flops_per_s on Oracle
(compute bound, JCT ~ 1/rate), each at the 2048-agent point by multiplicative updates.
"""
import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic

# paper.md §12.2, 64K rows: agents -> (Oracle, DualPath, Basic) JCT in seconds
CALIBRATION = {
    "ds660b": {"pe": 2, "de": 4, "points": {512: (1974, 2078, 2909), 1024: (2701, 2961, 5403),
                                             2048: (4935, 5403, 10078), 4096: (9351, 10338, 19354)}},
    "ds27b": {"pe": 1, "de": 1, "points": {512: (868, 1302, 2209), 1024: (1460, 2406, 4142),
                                            2048: (2406, 4497, 7890), 4096: (5247, 9467, 16756)}},
}
POLICIES = ("oracle", "dualpath", "basic")
FIT_AGENTS = 2048


def one_run(args):
    model_name, overrides, policy, agents = args
    spec = CALIBRATION[model_name]
    cfg = SimConfig(get_preset(model_name, **overrides), policy, spec["pe"], spec["de"])
    start = time.time()
    row, _ = run_offline(cfg, agentic("64k", agents))
    return {"model": model_name, "policy": policy, "agents": agents, "jct_s": row["jct_s"],
            "ref_jct_s": spec["points"][agents][POLICIES.index(policy)],
            "wall_s": time.time() - start, **overrides}


def fit(model_names: list[str], rounds: int, pool) -> dict:
    consts = {m: {"snic_tokens_per_s": get_preset(m).snic_tokens_per_s,
                  "pe_flops_per_s": get_preset(m).pe_flops_per_s} for m in model_names}
    for _ in range(rounds):
        jobs = [(m, dict(consts[m]), p, FIT_AGENTS) for m in model_names for p in ("basic", "oracle")]
        results = list(pool.map(one_run, jobs))
        print(json.dumps(results), flush=True)
        for r in results:
            name = "snic_tokens_per_s" if r["policy"] == "basic" else "pe_flops_per_s"
            consts[r["model"]][name] *= r["jct_s"] / r["ref_jct_s"]
    return consts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ds660b,ds27b")
    parser.add_argument("--fit", action="store_true", help="fit the constants (else use the presets')")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="run every calibration point")
    parser.add_argument("--agents", default="512,1024,2048,4096")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    models = args.model.split(",")
    with ProcessPoolExecutor(args.jobs) as pool:
        consts = fit(models, args.rounds, pool) if args.fit else {m: {} for m in models}
        print(json.dumps({"fitted": consts}), flush=True)
        if args.table:
            jobs = [(m, consts[m], p, int(a)) for a in args.agents.split(",") for m in models for p in POLICIES]
            for row in pool.map(one_run, jobs):
                row["ratio"] = row["jct_s"] / row["ref_jct_s"]
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
