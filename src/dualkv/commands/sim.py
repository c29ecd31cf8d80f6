"""`dualkv sim offline|online|calibrate`: run the cluster simulator over the DualPath scheduler
and print a table (or one JSON document), writing PNG plots to --out (with --json only when
--out is given: a script reading the JSON does not pay matplotlib's second or so); `calibrate` refits a
model's constants on the calibration file (dualkv.sim.calibrate) and prints each residual."""
from __future__ import annotations

from dualkv.errors import InvalidArgument

DEFAULT_GRIDS = {"ds660b": [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
                 "ds27b": [0.25, 0.3, 0.4, 0.5, 0.6, 0.75]}
OFFLINE_COLUMNS = ("policy", "jct_s", "turns_per_s", "ttft_mean_s", "ttft_p99_s", "tpot_mean_ms",
                   "snic_max_avg", "snic_bytes_max_avg", "snic_util", "attn_max_avg_10pct",
                   "max_link_util")
ONLINE_COLUMNS = ("policy", "aps", "stop", "meets_slo", "ttft_mean_s", "ttft_p99_s", "ttst_mean_s",
                  "tpot_mean_ms", "snic_max_avg", "snic_bytes_max_avg", "max_link_util")


def add_arguments(parser):
    parser.add_argument("mode", choices=("offline", "online", "calibrate", "plan"))
    parser.add_argument("--model", default="ds660b", help="ds660b, ds27b or qwen32b")
    parser.add_argument("--pe", type=int, default=2, help="prefill nodes")
    parser.add_argument("--de", type=int, default=4, help="decode nodes")
    parser.add_argument("--agents", type=int, help="offline, plan: agents at t = 0 (offline default 1024)")
    parser.add_argument("--maxlen", default="64k", help="trace set: 32k, 48k or 64k")
    parser.add_argument("--policy", help="comma list of basic, layer, dpl, dualpath, oracle, round_robin, "
                        "split (default basic,dualpath,oracle; plan: basic,dualpath)")
    parser.add_argument("--bytes-per-token", type=int, help="override the model's stored KV bytes/token")
    parser.add_argument("--aps", help="online, plan: comma list of agent arrival rates (online default: "
                        "the paper's grid)")
    parser.add_argument("--trace", help="online: replay this Mooncake trace (.jsonl[.gz]) instead of agents")
    parser.add_argument("--max-s", type=float, default=7200.0, help="online: longest simulated run")
    parser.add_argument("--fetch-ms", type=float, default=20.0, help="group fetch period")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="directory for PNG plots (default sim-out; with --json, plots "
                        "are written only when --out is given)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--data", help="calibrate: calibration points (default: the packaged file)")
    parser.add_argument("--no-fit", action="store_true", help="calibrate: the presets' residuals only")
    parser.add_argument("--rounds", type=int, default=1, help="calibrate: fit passes")
    parser.add_argument("--jobs", type=int, default=2, help="calibrate: worker processes")
    parser.add_argument("--nodes", type=int, help="plan: nodes to split into P prefill + D decode")
    parser.add_argument("--ttft-slo-s", type=float, help="plan: mean TTFT SLO (default 4 s)")
    parser.add_argument("--tpot-slo-ms", type=float, help="plan: mean TPOT SLO (default 50 ms)")
    parser.add_argument("--workers", type=int, help="plan: simulator processes (default: every core)")


def run(args):
    from dualkv.sched import get_policy

    if args.mode == "calibrate":
        return _calibrate(args)
    from dualkv.sim.config import SimConfig, get_preset

    if args.mode == "plan":
        from dualkv.commands.sim_plan import run_plan

        return run_plan(args)
    if args.agents is None:
        args.agents = 1024
    policies = [p.strip() for p in (args.policy or "basic,dualpath,oracle").split(",") if p.strip()]
    for p in policies:
        get_policy(p)
    overrides = {"bytes_per_token": args.bytes_per_token} if args.bytes_per_token else {}
    model = get_preset(args.model, **overrides)
    configs = [SimConfig(model, p, args.pe, args.de, fetch_period_s=args.fetch_ms / 1000, seed=args.seed)
               for p in policies]
    rows = _offline(args, configs) if args.mode == "offline" else _online(args, configs)
    for row in rows:
        links = [v for k, v in row.items() if k.endswith(("cnic_read_util", "cnic_write_util", "dram_util"))]
        row["max_link_util"] = max((v for v in links if v is not None), default=None)
        row["maxlen"] = args.maxlen
    _emit(args, rows)
    return 0


def _offline(args, configs):
    from tqdm import tqdm

    from dualkv.sim import plots
    from dualkv.sim.run import run_offline
    from dualkv.sim.workload import agentic

    work = agentic(args.maxlen, args.agents, args.seed)
    rows, series = [], {}
    for cfg in configs:
        with tqdm(total=work.num_agents, desc=cfg.policy, unit="agent", leave=False, disable=None) as bar:
            row, series[cfg.policy] = run_offline(cfg, work, bar.update)
        rows.append(row)
    out = plot_dir(args)
    args.plots = [] if out is None else [
        plots.plot_jct(rows, plots.out_path(out, "jct.png")),
        plots.plot_snic_balance(series, plots.out_path(out, "snic_balance.png"))]
    return rows


def plot_dir(args) -> str | None:
    """Where the plots go: --out, else sim-out; None (no plots) for --json without --out."""
    if args.json and args.out is None:
        return None
    return args.out or "sim-out"


def _online(args, configs):
    from tqdm import tqdm

    from dualkv.sim import plots
    from dualkv.sim.run import capacity_search, run_online
    from dualkv.sim.workload import mooncake

    rows = []
    if args.trace:
        work = mooncake(args.trace)
        for cfg in configs:
            row, _ = run_online(cfg, args.maxlen, 0.0, args.max_s, workload=work)
            rows.append(dict(row, workload="mooncake"))
        args.plots = []
        return rows
    grid = [float(x) for x in args.aps.split(",")] if args.aps else DEFAULT_GRIDS.get(args.model, DEFAULT_GRIDS["ds660b"])
    if any(a <= 0 for a in grid):
        raise InvalidArgument("--aps values must be > 0")
    with tqdm(total=len(grid) * len(configs), desc="online", unit="run", leave=False, disable=None) as bar:
        for cfg in configs:
            capacity, found = capacity_search(cfg, args.maxlen, grid, args.max_s, bar.update)
            rows.extend(dict(r, capacity_aps=capacity) for r in found)
    out = plot_dir(args)
    args.plots = [] if out is None else [plots.plot_online(rows, plots.out_path(out, "online.png"))]
    return rows


def _calibrate(args):
    from dualkv.sim import calibrate

    args.policies = args.policy
    args.data = args.data or str(calibrate.DATA_PATH)
    return calibrate.calibrate(args)


def node_bytes_line(row: dict, max_listed: int = 16) -> str:
    """Each storage NIC's read GB (PE nodes, then DE nodes), the balance metric's raw data;
    past `max_listed` nodes only min / median / max per side, to keep a line a line."""
    pe = row["snic_node_gb"][: row["pe_nodes"]]
    de = row["snic_node_gb"][row["pe_nodes"]:]

    def side(values):
        if len(values) <= max_listed:
            return " ".join(f"{v:.1f}" for v in values)
        v = sorted(values)
        return f"min {v[0]:.1f} median {v[len(v) // 2]:.1f} max {v[-1]:.1f}"

    ratio = row["snic_bytes_max_avg"]
    return (f"snic read GB {row['policy']}" + (f" @ {row['aps']} aps" if "aps" in row else "")
            + f": PE [{side(pe)}] DE [{side(de)}] max/avg "
            + (f"{ratio:.3f}" if ratio is not None else "-"))


def _emit(args, rows):
    from dualkv.bench.report import Report, format_table

    if args.json:
        report = Report(f"sim {args.mode}", as_json=True)
        for row in rows:
            report.add(row)
        report.finish()
        return
    print(format_table(rows, OFFLINE_COLUMNS if args.mode == "offline" else ONLINE_COLUMNS))
    for row in rows:
        print(node_bytes_line(row))
    if args.mode == "online" and rows and "capacity_aps" in rows[0]:
        for policy in dict.fromkeys(r["policy"] for r in rows):
            cap = next(r["capacity_aps"] for r in rows if r["policy"] == policy)
            print(f"capacity {policy}: {cap} agents/s (TTFT <= 4 s, TPOT <= 50 ms)")
    for path in args.plots:
        print(f"wrote {path}")

