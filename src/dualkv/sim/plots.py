"""PNG plots of simulator results (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_jct(rows: list[dict], path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([r["policy"] for r in rows], [r["jct_s"] for r in rows], color="#4477aa")
    ax.set_ylabel("JCT (s)")
    r = rows[0]
    ax.set_title(f"{r['model']} {r['pe_nodes']}P{r['de_nodes']}D, {r['agents']} agents")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_snic_balance(series: dict[str, dict], path: str) -> str:
    """Max/avg storage-NIC read bytes per window over time, one line per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for policy, s in series.items():
        w = s["window_s"]
        ax.plot([i * w for i in range(len(s["snic_max_avg"]))], s["snic_max_avg"], label=policy, lw=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("SNIC max / avg")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_online(rows: list[dict], path: str) -> str:
    """Mean TTFT and TPOT against agent arrival rate, one line per policy."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = [r for r in rows if r["policy"] == policy and r["ttft_mean_s"] is not None]
        a1.plot([r["aps"] for r in pts], [r["ttft_mean_s"] for r in pts], "o-", label=policy)
        a2.plot([r["aps"] for r in pts], [r["tpot_mean_ms"] for r in pts], "o-", label=policy)
    a1.axhline(4.0, color="grey", ls="--", lw=0.8)
    a2.axhline(50.0, color="grey", ls="--", lw=0.8)
    a1.set_xlabel("APS (agents/s)")
    a1.set_ylabel("mean TTFT (s)")
    a2.set_xlabel("APS (agents/s)")
    a2.set_ylabel("mean TPOT (ms)")
    a1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def out_path(out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, name)


def plot_plan(rows: list[dict], figure: str, recommended: dict[str, dict], path: str) -> str:
    """The planner's answer: JCT or SLO capacity against the number of prefill nodes, one
    line per policy, its recommended split circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for policy, rec in recommended.items():
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["pe_nodes"])
        line, = ax.plot([r["pe_nodes"] for r in mine], [r[figure] for r in mine], "o-", label=policy)
        ax.plot([rec["best_pe_nodes"]], [rec[f"best_{figure}"]], "o", ms=14, mfc="none",
                color=line.get_color())
    r = rows[0]
    n = r["pe_nodes"] + r["de_nodes"]
    ax.set_xticks(sorted({r["pe_nodes"] for r in rows}))
    ax.set_xlabel(f"prefill nodes P (decode nodes = {n} - P)")
    ax.set_ylabel("JCT (s)" if figure == "jct_s" else "SLO capacity (agents/s)")
    ax.set_title(f"{r['model']} {r['maxlen']}, {n} nodes: P/D split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
