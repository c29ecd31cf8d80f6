"""The simulator's prediction for the demo's configuration, and the demo's figure.

The preset is the demo's model as the simulator sees it: bytes per token = what the emulated
storage NIC charges per hit token (a Full Block with its header page / block_tokens), SNIC
rate = the demo's --snic-mbps, 1 PE + num_de DE nodes of one GPU each. The two compute
constants (PE FLOP/s, TPOT) and the turn shapes come from a calibration run of their own
(dualkv.demo.calibration: Oracle on other conversations, cached on disk), never from the runs
the prediction is compared with.
"""
from __future__ import annotations

import numpy as np

from dualkv.cluster.batching import model_attention
from dualkv.sched import AttentionFlops
from dualkv.sim.config import ModelPreset, SimConfig
from dualkv.sim.run import run_offline
from dualkv.sim.workload import Workload


def timed_workload(args, timed) -> Workload:
    """The timed turns, agent-major (turn r of agent a is timed[r * agents + a])."""
    order = [r * args.agents + a for a in range(args.agents) for r in range(args.rounds)]
    prompt = np.array([timed[i][0] for i in order], np.int64)
    hit = np.array([timed[i][1].num_cached_blocks * args.block_tokens for i in order], np.int64)
    gen = np.array([len(timed[i][1].generated) for i in order], np.int64)
    start = np.arange(0, len(order) + 1, args.rounds, dtype=np.int64)
    return Workload("demo", prompt, hit, gen, start, np.zeros(args.agents))


def _linear_flops_per_token(cfg) -> float:
    per_layer = cfg.hidden * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) \
        + 3 * cfg.hidden * cfg.ffn
    return 2.0 * cfg.num_layers * per_layer


def _attention(cfg) -> AttentionFlops:
    return model_attention(cfg)  # the cluster's PE batchers count attention the same way


def prefill_flops(cfg, work: Workload) -> float:
    """FLOPs of prefilling every turn of `work` over its hit (the simulator's cost model)."""
    attention, miss = _attention(cfg), work.prompt - work.hit
    return (sum(attention(int(h), int(m)) for h, m in zip(work.hit, miss))
            + _linear_flops_per_token(cfg) * miss.sum())


def demo_preset(args, cfg, pe_flops_per_s: float, tpot_s: float) -> ModelPreset:
    layout = cfg.layout(args.block_tokens)
    bytes_per_token = layout.full_block_bytes // args.block_tokens
    return ModelPreset("demo", cfg.num_layers, bytes_per_token, _attention(cfg),
                       _linear_flops_per_token(cfg), pe_flops_per_s=pe_flops_per_s,
                       snic_tokens_per_s=args.snic_mbps * 1e6 / bytes_per_token,
                       de_hbm_tokens=10**7, pe_hbm_tokens=10**7,
                       tpot_light_s=tpot_s, tpot_full_s=tpot_s, dram_bytes_per_node=64e9)


def predict(args, cfg, calibration: dict, policies) -> dict:
    """{policy: simulated turns/s} for the demo's configuration, from the calibration alone."""
    from dualkv.demo.calibration import workload_of

    preset = demo_preset(args, cfg, calibration["pe_flops_per_s"], calibration["tpot_s"])
    work = workload_of(calibration)
    out = {}
    for policy in policies:
        sim_cfg = SimConfig(preset, policy, num_pe_nodes=1, num_de_nodes=args.num_de,
                            gpus_per_node=1, cnic_bytes_per_s=5e9, dram_bytes_per_s=20e9,
                            block_tokens=args.block_tokens)
        out[policy] = run_offline(sim_cfg, work)[0]["turns_per_s"]
    return out


def _plot_throughput(ax, rows: list[dict]) -> None:
    """Throughput normalised to Basic, measured beside predicted; Oracle (the I/O-free bound)
    as horizontal lines rather than a bar, so the DualPath/Basic ratio reads at a glance."""
    by_policy = {r["policy"]: r for r in rows}
    basic = by_policy.get("basic")
    if basic is None:  # nothing to normalise to: plain turns/s
        ax.bar(np.arange(len(rows)), [r["turns_per_s"] for r in rows], 0.5)
        ax.set_xticks(np.arange(len(rows)), [r["policy"] for r in rows])
        ax.set_ylabel("turns/s")
        return
    bars = [r for r in rows if r["policy"] != "oracle"]
    x = np.arange(len(bars))
    for offset, key, label in ((-0.2, "turns_per_s", "measured"),
                               (0.2, "sim_turns_per_s", "simulator")):
        if not basic.get(key):
            continue
        heights = [(r.get(key) or 0) / basic[key] for r in bars]
        drawn = ax.bar(x + offset, heights, 0.4, label=label)
        ax.bar_label(drawn, fmt="%.2fx", fontsize=8)
        oracle = by_policy.get("oracle", {}).get(key)
        if oracle:
            ax.axhline(oracle / basic[key], color=drawn.patches[0].get_facecolor(), ls="--",
                       label=f"Oracle, {label}")
    ax.set_xticks(x, [r["policy"] for r in bars])
    ax.set_ylabel("throughput / Basic's")
    ax.legend(fontsize=8)


def plot(rows: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["policy"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    _plot_throughput(axes[0], rows)
    num_nodes = len(rows[0]["snic_mb"])
    for n in range(num_nodes):
        label = "PE node" if n == 0 else f"DE node {n}"
        axes[1].bar(x + (n - (num_nodes - 1) / 2) * 0.25, [r["snic_mb"][n] for r in rows], 0.25,
                    label=label)
    axes[1].set_ylabel("storage-NIC MB read (timed rounds)")
    axes[1].legend()
    axes[2].bar(x - 0.2, [r["ttft_p50_s"] for r in rows], 0.4, label="p50")
    axes[2].bar(x + 0.2, [r["ttft_p90_s"] for r in rows], 0.4, label="p90")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].legend()
    for ax in axes[1:]:
        ax.set_xticks(x, names)
    r = rows[0]
    if "workload" in r:  # an online run
        shape = f"{r['workload']}, {r['sessions']} sessions online (rate {r['rate']}/s)"
    else:
        shape = f"{r['agents']} agents x {r['rounds']} rounds, {r['context']}-token context"
    fig.suptitle(f"dualkv demo: 1P{r['num_de']}D local cluster, {shape}, "
                 f"SNIC {r['snic_mbps']:g} MB/s, CNIC {r.get('cnic_mbps', 0):g} MB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
