"""`dualkv sim plan`: the P/D planner (dualkv.sim.plan) as a command. It prints one line per
(policy, split), then the recommended split and the sensitivity of each policy, and writes
plan.png; --json prints the rows and the recommendations as one document."""
from __future__ import annotations

from dualkv.errors import InvalidArgument

OFFLINE_COLUMNS = ("policy", "split", "jct_s", "turns_per_s", "ttft_mean_s", "tpot_mean_ms",
                   "snic_bytes_max_avg")
ONLINE_COLUMNS = ("policy", "split", "capacity_aps", "last_aps", "last_ttft_mean_s", "last_tpot_mean_ms")


def spec_from_args(args):
    from dualkv.sim.plan import PlanSpec
    from dualkv.sim.run import TPOT_SLO_S, TTFT_SLO_S

    if args.nodes is None:
        raise InvalidArgument("sim plan needs --nodes (prefill + decode nodes to split)")
    if (args.agents is None) == (args.aps is None):
        raise InvalidArgument("sim plan needs exactly one of --agents (offline JCT) and --aps (SLO capacity)")
    if args.workers is not None and args.workers < 1:
        raise InvalidArgument(f"--workers must be >= 1, got {args.workers}")
    policies = tuple(p.strip() for p in (args.policy or "basic,dualpath").split(",") if p.strip())
    rates = tuple(float(x) for x in args.aps.split(",")) if args.aps else ()
    return PlanSpec(args.model, args.nodes, args.maxlen, num_agents=args.agents, rates=rates,
                    ttft_slo_s=args.ttft_slo_s if args.ttft_slo_s is not None else TTFT_SLO_S,
                    tpot_slo_ms=args.tpot_slo_ms if args.tpot_slo_ms is not None else 1000 * TPOT_SLO_S,
                    policies=policies, max_s=args.max_s, seed=args.seed,
                    fetch_period_s=args.fetch_ms / 1000, bytes_per_token=args.bytes_per_token)


def run_plan(args) -> int:
    from tqdm import tqdm

    from dualkv.sim import plots
    from dualkv.sim.plan import plan, recommend

    spec = spec_from_args(args)
    num_runs = len(spec.policies) * len(spec.splits())
    with tqdm(total=num_runs, desc="plan", unit="run", leave=False, disable=None) as bar:
        rows = plan(spec, args.workers, bar.update)
    recommended = recommend(spec, rows)
    png = plots.plot_plan(rows, spec.figure, recommended, plots.out_path(args.out or "sim-out", "plan.png"))
    if args.json:
        _emit_json(rows, recommended)
    else:
        _emit_text(spec, rows, recommended, png)
    return 0


def _emit_json(rows, recommended):
    from dualkv.bench.report import Report

    report = Report("sim plan", as_json=True)
    for row in rows:
        report.add(dict(row, kind="split"))
    for rec in recommended.values():
        report.add(dict(rec, kind="recommendation"))
    report.finish()


def _emit_text(spec, rows, recommended, png):
    from dualkv.bench.report import format_table

    print(format_table(rows, ONLINE_COLUMNS if spec.is_online else OFFLINE_COLUMNS))
    unit = "agents/s" if spec.is_online else "s JCT"
    if spec.is_online:
        print(f"SLO: mean TTFT <= {spec.ttft_slo_s} s, mean TPOT <= {spec.tpot_slo_ms} ms; "
              f"rates tried: {', '.join(str(r) for r in spec.rates)}")
    for rec in recommended.values():
        value = rec[f"best_{spec.figure}"]
        spread, near = rec["spread"], rec["neighbour_loss"]
        print(f"recommended {rec['policy']}: {rec['best_split']} ({value:.4g} {unit}); "
              f"one node off costs up to {_pct(near)}, the worst split {_pct(spread)}")
    print(f"wrote {png}")


def _pct(loss) -> str:
    return "n/a (no split meets the SLO)" if loss is None else f"{100 * loss:.1f}%"
