"""`dualkv demo`: the main job — an agentic workload on a local 1 PE + 2 DE cluster under
Basic, DualPath and Oracle, beside the simulator's prediction. `dualkv demo store`: the block
store trace replay (dualkv.demo.store_command)."""
import os


def add_arguments(parser):
    from dualkv.demo import cluster_capacity

    parser.add_argument("--policies", default="basic,dualpath,oracle")
    parser.add_argument("--num-de", type=int, default=2)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the first")
    parser.add_argument("--context", type=int, default=2048, help="tokens stored per agent")
    parser.add_argument("--append", type=int, default=64, help="tokens appended per round")
    parser.add_argument("--gen", type=int, default=8, help="tokens generated per turn (>= 2)")
    parser.add_argument("--snic-mbps", type=float, default=90.0,
                        help="emulated storage NIC per node, MB/s (the scarce resource); the "
                             "default, with the default model and workload, leaves compute a "
                             "real share of the run: Oracle/Basic 2-3x on 2 cores")
    parser.add_argument("--cnic-mbps", type=float, default=None,
                        help="emulated compute NIC per node (KV between nodes), MB/s; default "
                             "8x --snic-mbps: the paper's per-GPU CNIC against a storage NIC "
                             "that g = 8 GPUs share (s = 1)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="parent of the block directories")
    parser.add_argument("--out", default="demo-out", help="where the PNG figure goes")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulator's prediction")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure the simulator's compute constants again (an Oracle run on "
                             "other conversations) instead of reusing the cached calibration")
    parser.add_argument("--workload", choices=("agentic", "mooncake"), default="agentic",
                        help="mooncake: the Mooncake trace, online (dualkv.demo.cluster_online)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="online: Poisson agent arrivals per s (agentic), or the trace's "
                             "mean request rate (mooncake; 0 = its own timestamps). 0 with "
                             "agentic: offline, all agents at t = 0 in synchronous rounds")
    parser.add_argument("--trace", default=None, help="Mooncake trace path (default: "
                        "DUALKV_TRACE, else the trace shipped with dualkv)")
    parser.add_argument("--trace-requests", type=int, default=40)
    parser.add_argument("--trace-block-tokens", type=int, default=64,
                        help="tokens each 512-token trace block becomes")
    parser.add_argument("--max-prompt", type=int, default=4096, help="mooncake prompt cap")
    parser.add_argument("--slo-capacity", action="store_true",
                        help="online SLO capacity: per policy, the largest of --rates whose run "
                             "meets the SLO (dualkv.demo.cluster_capacity)")
    parser.add_argument("--rates", default=cluster_capacity.DEFAULT_RATES,
                        help="--slo-capacity: comma list of rates (as --rate) to try")
    parser.add_argument("--ttft-slo-s", type=float, default=None,
                        help="--slo-capacity: bound on the mean TTFT, s (default: twice an idle "
                             "node's read of one --context)")
    parser.add_argument("--tpot-slo-ms", type=float, default=cluster_capacity.TPOT_SLO_MS,
                        help="--slo-capacity: bound on the mean TPOT, ms (scaled to the CPU model)")
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="what")
    from dualkv.demo import store_command

    store_command.add_arguments(sub.add_parser("store", help=store_command.__doc__))


def run(args):
    if args.what == "store":
        from dualkv.demo import store_command

        return store_command.run(args)
    if args.slo_capacity:
        return _run_capacity(args)
    return _run_cluster(args)


def _check(args):
    from dualkv.errors import InvalidArgument

    if args.root is not None and not os.path.isdir(args.root):  # before any bar or node starts
        raise InvalidArgument(f"--root {args.root} is not a directory")
    policies = args.policies.split(",")
    unknown = set(policies) - {"basic", "dualpath", "oracle"}
    if unknown:
        raise InvalidArgument(f"unknown policies {sorted(unknown)}; use basic, dualpath, oracle")
    if args.gen < 2 or args.agents < 1 or args.rounds < 1 or args.context < args.block_tokens:
        raise InvalidArgument("need --gen >= 2, --agents >= 1, --rounds >= 1 and --context >= "
                              "--block-tokens")
    if not args.snic_mbps > 0:
        raise InvalidArgument(f"--snic-mbps must be > 0, got {args.snic_mbps}")
    if args.cnic_mbps is not None and not args.cnic_mbps > 0:
        raise InvalidArgument(f"--cnic-mbps must be > 0, got {args.cnic_mbps}")
    if args.rate < 0 or args.trace_requests < 1 or args.max_prompt < 2:
        raise InvalidArgument("need --rate >= 0, --trace-requests >= 1 and --max-prompt >= 2")
    if args.workload == "mooncake":  # a bad trace file stops the demo before any node starts
        from dualkv.workloads.mooncake import load_trace

        load_trace(args.trace, limit=args.trace_requests)
    return policies


def is_online(args) -> bool:
    return args.workload == "mooncake" or args.rate > 0


def turns_per_run(args) -> int:
    """Turns one policy's run takes (the progress bar's share)."""
    return args.trace_requests if args.workload == "mooncake" else args.agents * (args.rounds + 1)


def _run_cluster(args):
    from tqdm import tqdm

    from dualkv.bench.report import Report, with_reference
    from dualkv.demo.calibration import load_or_measure
    from dualkv.demo.cluster_demo import demo_model, run_policy as run_offline
    from dualkv.demo.cluster_online import run_online
    from dualkv.demo.cluster_predict import plot, predict

    policies, cfg = _check(args), demo_model(args)
    report, rows = Report("demo", args.json), {}
    run_policy = run_online if is_online(args) else run_offline
    calibration = None
    with tqdm(total=len(policies) * turns_per_run(args), desc="demo turns",
              disable=args.json) as bar:
        if not args.no_sim and not is_online(args):
            bar.set_postfix_str("calibration")
            calibration = load_or_measure(args, cfg, force=args.recalibrate)
            # the PE batchers of the compared runs use the calibration's FLOP/s too
            args.pe_flops_per_s = calibration["pe_flops_per_s"]
        for policy in policies:
            bar.set_postfix_str(policy)
            rows[policy], _ = run_policy(args, policy, cfg, bar.update)
    if calibration is not None:
        for policy, tps in predict(args, cfg, calibration, rows).items():
            rows[policy].update(sim_turns_per_s=tps, sim_calibration=calibration["path"],
                                sim_calibration_reused=calibration["reused"])
    basic = rows.get("basic")
    for policy, row in rows.items():
        if basic is not None and policy != "basic":
            row = rows[policy] = with_reference(row, "turns_per_s", "basic", basic["turns_per_s"])
            if row.get("sim_turns_per_s") and basic.get("sim_turns_per_s"):
                row["sim_ratio"] = row["sim_turns_per_s"] / basic["sim_turns_per_s"]
        report.add(row)
    os.makedirs(args.out, exist_ok=True)
    figure = plot(list(rows.values()), os.path.join(args.out, "demo.png"))
    if not args.json:
        _summary(rows, figure)
    report.finish()
    return 0


def _run_capacity(args):
    from tqdm import tqdm

    from dualkv.bench.report import Report
    from dualkv.demo.cluster_capacity import parse_rates, run_capacity, summary
    from dualkv.demo.cluster_demo import demo_model

    policies, cfg = _check(args), demo_model(args)
    rows = []
    with tqdm(total=len(policies) * len(parse_rates(args.rates)) * turns_per_run(args),
              desc="capacity turns", disable=args.json) as bar:
        for policy in policies:
            bar.set_postfix_str(policy)
            rows += run_capacity(args, policy, cfg, bar.update)[1]
    if not args.json:
        print(summary(rows))
        return 0
    report = Report("demo slo-capacity", as_json=True)
    for row in rows:
        report.add(row)
    report.finish()
    return 0


def _summary(rows, figure):
    oracle, dp = rows.get("oracle", {}), rows.get("dualpath", {})
    if oracle.get("ratio"):
        print(f"Oracle / Basic throughput: {oracle['ratio']:.2f}x (the I/O-free bound: how much "
              "of Basic's time is waiting for storage)")
    if dp.get("ratio"):
        line = f"DualPath / Basic throughput: measured {dp['ratio']:.2f}x"
        if dp.get("sim_ratio"):
            line += (f", simulator {dp['sim_ratio']:.2f}x (measured/predicted "
                     f"{dp['ratio'] / dp['sim_ratio'] - 1:+.0%})")
        print(line)
    if dp.get("sim_calibration"):
        how = "reused" if dp["sim_calibration_reused"] else "measured now"
        print(f"simulator constants: an Oracle run on other conversations, {how}, "
              f"{dp['sim_calibration']} (--recalibrate to measure again)")
    print(f"figure: {figure}")
