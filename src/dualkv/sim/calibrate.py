"""Fit the simulator's constants on the calibration points of one data file
(data/calibration.json: paper.md §12.2's 64K row of each model, and §5's layerwise step) and
nothing else; print every point's residual.

    dualkv sim calibrate --model qwen32b            # refit, then the residual table
    dualkv sim calibrate --model ds660b --no-fit    # the presets' residuals only

Each model's `fit` steps run in order, each on one run of the file (a policy at an agent
count), each depending only on constants fitted before it, so one pass fits them (--rounds
repeats it as a check). Every fitted constant is a rate or a capacity, so the JCT falls as it
grows: `secant` solves JCT = the file's by a secant on log value (stopping where the JCT
barely responds: not identified); `scan` takes the value of a log grid whose JCT is nearest
(Basic's JCT is not quite monotone in the PE HBM cap: a cap that stops chunking saves the
chunk's second whole-KV load). The policy `layer` targets (1 - layer_step) x the file's Basic
JCT: where Basic is PE bound (ds660b) the storage rate is fitted on Layer, which reads on the
PE storage NICs only, like Basic, with no HBM cap. docs/simulator.md lists the steps and how
well each point identifies its constant.
"""
import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dualkv.errors import InvalidArgument
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic

DATA_PATH = Path(__file__).with_name("data") / "calibration.json"
POLICIES = ("oracle", "dualpath", "basic")
FITTABLE = ("pe_flops_per_s", "snic_tokens_per_s", "pe_hbm_tokens", "de_hbm_tokens")
INTEGER = ("pe_hbm_tokens", "de_hbm_tokens")  # token counts: the simulator types them int64
CAP_GRID = [int(32_000 * 2 ** (k / 2)) for k in range(9)]  # 32K .. 512K tokens per PE GPU
_SPEC_KEYS = ("pe_nodes", "de_nodes", "maxlen", "fit", "points")


def load_points(path=DATA_PATH) -> dict:
    """The calibration file, checked: every model names its cluster, trace set, fit point and
    per-agent-count JCTs of the three policies."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read calibration file {path}: {exc}") from exc
    if not 0 <= data.get("layer_step", -1) < 1 or not data.get("models"):
        raise InvalidArgument(f"{path}: needs layer_step in [0, 1) and a non-empty models map")
    for name, spec in data["models"].items():
        missing = [k for k in _SPEC_KEYS if k not in spec]
        if missing:
            raise InvalidArgument(f"{path}: model {name} lacks {', '.join(missing)}")
        if any(set(POLICIES) - set(p) or "agents" not in p for p in spec["points"]):
            raise InvalidArgument(f"{path}: model {name}: every point needs agents and "
                                  f"{', '.join(POLICIES)}")
        agents = [p["agents"] for p in spec["points"]]
        for step in spec["fit"]:
            if (step.get("constant") not in FITTABLE or step.get("agents") not in agents
                    or step.get("policy") not in (*POLICIES, "layer")
                    or step.get("method", "secant") not in ("secant", "scan")):
                raise InvalidArgument(f"{path}: model {name}: bad fit step {step}: constant one "
                                      f"of {', '.join(FITTABLE)}, a point's agents, a policy")
    return data


def ref_jct(data: dict, model_name: str, policy: str, agents: int) -> float:
    point = next(p for p in data["models"][model_name]["points"] if p["agents"] == agents)
    if policy == "layer":  # paper.md §5: layerwise prefill alone, against Basic
        return (1.0 - data["layer_step"]) * point["basic"]
    return float(point[policy])


def one_run(args) -> dict:
    data, model_name, overrides, policy, agents = args
    spec = data["models"][model_name]
    model = get_preset(model_name, **overrides)
    cfg = SimConfig(model, policy, spec["pe_nodes"], spec["de_nodes"])
    work = agentic(spec["maxlen"], agents)
    start = time.process_time()
    row, _ = run_offline(cfg, work)
    # share of the run the PE storage NICs were busy (Basic and Layer read only there)
    pe_snic_busy = float(work.hit.sum()) / (model.snic_tokens_per_s * spec["pe_nodes"] * row["jct_s"])
    ref = ref_jct(data, model_name, policy, agents)
    return {"model": model_name, "policy": policy, "agents": agents, "jct_s": row["jct_s"],
            "ref_jct_s": ref, "ratio": row["jct_s"] / ref, "residual_pct": 100 * (row["jct_s"] / ref - 1),
            "pe_snic_busy": pe_snic_busy, "cpu_s": time.process_time() - start, **overrides}


def _log(result: dict, quiet: bool) -> float:
    if not quiet:
        print(json.dumps(result), flush=True)
    return result["jct_s"]


def _secant(data, model_name, consts, step, quiet, steps=4, tol=0.005) -> None:
    """JCT falls as the constant grows: multiplicative first step, then secant in log-log (the
    JCT is not proportional to 1/value where latency or another resource binds). Keeps the
    tried value nearest the target; stops where the JCT barely responds (not identified)."""
    name, policy, agents = step["constant"], step["policy"], step["agents"]
    target = ref_jct(data, model_name, policy, agents)
    floor = _floor(data, model_name, name, agents)
    points = []  # (log value, log JCT)
    for _ in range(steps):
        jct = _log(one_run((data, model_name, dict(consts), policy, agents)), quiet)
        points.append((math.log(consts[name]), math.log(jct)))
        if abs(jct / target - 1) < tol:
            break
        slope = -1.0
        if len(points) > 1 and points[-1][0] != points[-2][0]:
            slope = (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0])
            if slope > -0.1:  # under 10% of proportional: the point does not pin this constant
                if not quiet:
                    print(json.dumps({"model": model_name, "weak": name, "slope": slope}), flush=True)
                break
        consts[name] = _typed(name, max(floor, math.exp(points[-1][0] + (math.log(target) - points[-1][1]) / slope)))
    best = min(points, key=lambda p: abs(p[1] - math.log(target)))
    consts[name] = _typed(name, math.exp(best[0]))


def _floor(data, model_name, name, agents) -> float:
    """The smallest value a run accepts: a DE GPU must hold the workload's largest turn."""
    if name != "de_hbm_tokens":
        return 0.0
    work = agentic(data["models"][model_name]["maxlen"], agents)
    return float((work.prompt + work.gen).max())


def _typed(name: str, value: float):
    return int(round(value)) if name in INTEGER else float(value)


def _scan(data, model_name, consts, step, quiet) -> None:
    name, policy, agents = step["constant"], step["policy"], step["agents"]
    target = ref_jct(data, model_name, policy, agents)
    errors = {}
    for value in CAP_GRID:
        consts[name] = value
        jct = _log(one_run((data, model_name, dict(consts), policy, agents)), quiet)
        errors[value] = abs(math.log(jct / target))
    consts[name] = min(errors, key=errors.get)


def fit_model(data: dict, model_name: str, rounds: int = 1, quiet: bool = False,
              start: dict | None = None) -> dict:
    """The fitted constants of one model, from `data`'s points only, starting from `start`'s
    values where given, else the preset's."""
    if model_name not in data["models"]:
        raise InvalidArgument(f"no calibration points for model {model_name!r}")
    steps = data["models"][model_name]["fit"]
    consts = {s["constant"]: getattr(get_preset(model_name), s["constant"]) for s in steps}
    consts.update(start or {})
    for _ in range(rounds):
        for step in steps:
            fit = _scan if step.get("method") == "scan" else _secant
            fit(data, model_name, consts, step, quiet)
        if not quiet:
            print(json.dumps({"model": model_name, "round_fit": consts}), flush=True)
    return consts


def _fit_job(args) -> dict:
    return fit_model(*args)


def residual_rows(data, models, consts, policies, pool) -> list:
    jobs = [(data, m, consts[m], p, point["agents"]) for m in models
            for point in data["models"][m]["points"] for p in policies]
    return list(pool.map(one_run, jobs))


def print_residuals(rows) -> None:
    print(f"{'model':8} {'policy':9} {'agents':>6} {'sim_s':>8} {'paper_s':>8} {'residual':>9}")
    for r in rows:
        print(f"{r['model']:8} {r['policy']:9} {r['agents']:6d} {r['jct_s']:8.0f} "
              f"{r['ref_jct_s']:8.0f} {r['residual_pct']:+8.1f}%")
    for model in dict.fromkeys(r["model"] for r in rows):
        res = [abs(r["residual_pct"]) for r in rows if r["model"] == model and r["policy"] != "layer"]
        print(f"{model}: mean |residual| {sum(res) / len(res):.1f}%, max {max(res):.1f}% "
              f"over {len(res)} points")


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="ds660b,ds27b,qwen32b", help="comma list of models")
    parser.add_argument("--data", default=str(DATA_PATH), help="calibration points (JSON)")
    parser.add_argument("--no-fit", action="store_true", help="the presets' residuals, no refit")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--policies", default="oracle,dualpath,basic")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def calibrate(args) -> int:
    data = load_points(args.data)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    for m in models:
        get_preset(m)
        if m not in data["models"]:
            raise InvalidArgument(f"{args.data} has no points for model {m!r}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    with ProcessPoolExecutor(args.jobs) as pool:
        if args.no_fit:
            consts = {m: {} for m in models}
        else:  # one model per process: each fit is a chain of dependent runs
            jobs = [(data, m, args.rounds, args.json) for m in models]
            consts = dict(zip(models, pool.map(_fit_job, jobs)))
        rows = residual_rows(data, models, consts, policies, pool)
    if args.json:  # STYLE.md's one shape; each row carries the constants it ran with
        from dualkv.bench.report import Report

        report = Report("sim calibrate", as_json=True)
        for row in rows:
            report.add(row)
        report.finish()
    else:
        print(json.dumps({"fitted": consts}))
        print_residuals(rows)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return calibrate(parser.parse_args(argv))


if __name__ == "__main__":
    main()
