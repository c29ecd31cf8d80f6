"""Local cluster, Basic vs DualPath: 1 PE + N DE processes, each node with emulated storage
(the scarce resource) and compute NICs, agents replaying multi-turn conversations. The first round stores
every agent's context (no hit); the timed rounds each read the whole context back (hit) and
append/generate a little, so they are I/O-bound as in the paper's agentic setting.

Reports per policy: time of the timed rounds (jct_s), turns/s, the bytes each node's storage
NIC read and their max/avg ratio (1.0 = perfectly balanced), with DualPath's ratio to Basic.
"""
import argparse
import tempfile
import time

import numpy as np

from dualkv.bench.report import Report, with_reference


def parse(argv):
    p = argparse.ArgumentParser(prog="dualkv bench cluster", description=__doc__.splitlines()[0])
    p.add_argument("--policies", default="basic,dualpath")
    p.add_argument("--num-de", type=int, default=2)
    p.add_argument("--agents", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after the first")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--append", type=int, default=32)
    p.add_argument("--gen", type=int, default=4)
    p.add_argument("--snic-mbps", type=float, default=2.0, help="per-node storage NIC, MB/s")
    p.add_argument("--cnic-mbps", type=float, default=None,
                   help="per-node compute NIC (KV between nodes), MB/s; default 8x --snic-mbps")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--block-tokens", type=int, default=64)
    p.add_argument("--root", default=None, help="parent of the block directories")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def run_policy(args, policy, cfg):
    from dualkv.cluster.local import LocalCluster
    from dualkv.demo.cluster_demo import nic_rates

    rng = np.random.default_rng(0)  # same conversations for every policy
    prompts = [rng.integers(0, cfg.vocab_size, args.context).tolist() for _ in range(args.agents)]
    with tempfile.TemporaryDirectory(dir=args.root) as root, \
            LocalCluster(cfg, root, num_de=args.num_de, policy=policy, block_tokens=args.block_tokens,
                         snic_mbps=args.snic_mbps, cnic_mbps=nic_rates(args, policy)[1],
                         batch_invariant=False) as cluster:
        before, start = None, None
        for round_ in range(args.rounds + 1):
            if round_ == 1:
                before, start = cluster.snic_bytes(), time.perf_counter()
            results = cluster.run_batch([(p, args.gen) for p in prompts])
            prompts = [p + r.generated + rng.integers(0, cfg.vocab_size, args.append).tolist()
                       for p, r in zip(prompts, results)]
        jct = time.perf_counter() - start
        after = cluster.snic_bytes()
    read = [after[role] - before[role] for role in after]
    return dict(policy=policy, num_pe=1, num_de=args.num_de, agents=args.agents,
                rounds=args.rounds, context=args.context, snic_mbps=args.snic_mbps,
                cnic_mbps=nic_rates(args, policy)[1], jct_s=jct,
                turns_per_s=args.agents * args.rounds / jct,
                snic_mb=[round(b / 1e6, 3) for b in read],
                snic_max_avg=max(read) / (sum(read) / len(read)) if sum(read) else None)


def main(argv=None):
    args = parse(argv)
    from dualkv.engine import ModelConfig

    cfg = ModelConfig(vocab_size=1024, hidden=args.hidden, num_layers=args.layers, num_heads=4,
                      num_kv_heads=2, head_dim=args.hidden // 4, ffn=2 * args.hidden)
    report, rows = Report("bench cluster", args.json), {}
    for policy in args.policies.split(","):
        row = rows[policy] = run_policy(args, policy, cfg)
        if policy != "basic" and "basic" in rows:
            row = with_reference(row, "turns_per_s", "basic", rows["basic"]["turns_per_s"])
        report.add(row)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
