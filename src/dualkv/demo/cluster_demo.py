"""The main job (issue 5): one agentic workload on the local cluster (1 PE + N DE processes,
each a node with an emulated storage NIC) under Basic, DualPath and Oracle.

Workload: the cluster bench's shape — `agents` conversations, a first round that stores each
agent's `context` tokens (no hit, untimed), then `rounds` timed rounds that each read the whole
context back, append `append` tokens and generate `gen`. Rounds run as synchronous batches.

Oracle here = the DualPath engines and scheduler with both NIC emulations switched off
(snic_mbps = cnic_mbps = 0): the hit blocks are still read from the block files and moved
between processes (outputs stay correct) but no emulated NIC time is charged, so its
throughput is the compute-only bound of this machine.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np

from dualkv.engine import ModelConfig

POLICIES = ("basic", "dualpath", "oracle")
CNIC_PER_SNIC = 8  # one CNIC per GPU, one SNIC per node of g = 8 GPUs (paper.md, s = 1)


def nic_rates(args, policy: str) -> tuple[float, float]:
    """(storage NIC, compute NIC) MB/s of every node under `policy`: both uncapped for Oracle;
    the compute NIC defaults to CNIC_PER_SNIC x the storage NIC."""
    if policy == "oracle":
        return 0.0, 0.0
    cnic = getattr(args, "cnic_mbps", None)
    return args.snic_mbps, CNIC_PER_SNIC * args.snic_mbps if cnic is None else cnic


def demo_model(args) -> ModelConfig:
    return ModelConfig(vocab_size=1024, hidden=args.hidden, num_layers=args.layers, num_heads=4,
                       num_kv_heads=2, head_dim=args.hidden // 4, ffn=2 * args.hidden)


def run_policy(args, policy: str, cfg: ModelConfig, progress=None) -> tuple[dict, list]:
    """Runs the workload once; returns the row and the timed turns [(prompt_len, ClusterTurn)]."""
    from dualkv.cluster.local import LocalCluster

    rng = np.random.default_rng(args.seed)  # the same conversations for every policy
    prompts = [rng.integers(0, cfg.vocab_size, args.context).tolist() for _ in range(args.agents)]
    snic_mbps, cnic_mbps = nic_rates(args, policy)
    timed = []
    with tempfile.TemporaryDirectory(dir=args.root) as root, \
            LocalCluster(cfg, root, num_de=args.num_de, policy=policy,
                         block_tokens=args.block_tokens, snic_mbps=snic_mbps, cnic_mbps=cnic_mbps,
                         batch_invariant=False,
                         pe_flops_per_s=getattr(args, "pe_flops_per_s", None)) as cluster:
        before, start = None, None
        for round_ in range(args.rounds + 1):
            if round_ == 1:
                before, start = cluster.snic_bytes(), time.perf_counter()
            results = cluster.run_batch([(p, args.gen) for p in prompts])
            if round_:
                timed += [(len(p), r) for p, r in zip(prompts, results)]
            if progress is not None:
                progress(len(results))
            prompts = [p + r.generated + rng.integers(0, cfg.vocab_size, args.append).tolist()
                       for p, r in zip(prompts, results)]
        jct = time.perf_counter() - start
        after = cluster.snic_bytes()
    return _row(args, policy, (snic_mbps, cnic_mbps), jct, before, after, timed), timed


def _row(args, policy, nics, jct, before, after, timed) -> dict:
    read = [after[role] - before[role] for role in after]
    ttft = [t.ttft_s for _, t in timed]
    tpot = [t.decode_s / max(1, len(t.generated) - 1) for _, t in timed]
    return dict(policy=policy, num_pe=1, num_de=args.num_de, agents=args.agents,
                rounds=args.rounds, context=args.context, snic_mbps=nics[0], cnic_mbps=nics[1],
                turns=len(timed), turns_done=sum(len(t.generated) == args.gen for _, t in timed),
                jct_s=jct, turns_per_s=len(timed) / jct,
                snic_mb=[round(b / 1e6, 3) for b in read],
                snic_max_avg=max(read) / (sum(read) / len(read)) if sum(read) else None,
                ttft_p50_s=float(np.percentile(ttft, 50)),
                ttft_p90_s=float(np.percentile(ttft, 90)),
                tpot_p50_ms=1e3 * float(np.percentile(tpot, 50)),
                tpot_p90_ms=1e3 * float(np.percentile(tpot, 90)))
