"""Turns a finished Simulator into one flat result row (STYLE.md) plus the time series the
plots need."""
from __future__ import annotations

import numpy as np

from dualkv.sim.metrics import CHANNELS, percentiles, saturated_windows


def summarize(sim, since_s: float = 0.0) -> tuple[dict, dict]:
    cfg, m = sim.cfg, sim.cfg.model
    end = sim.now
    row = {"model": m.name, "policy": cfg.policy, "pe_nodes": cfg.num_pe_nodes,
           "de_nodes": cfg.num_de_nodes, "agents": sim.work.num_agents,
           "turns_done": sum(t - s for t, s in zip(sim.turn, sim.work.start[:-1].tolist())),
           "sim_end_s": end, "split_reads": sim.num_split}
    keep = np.asarray(sim.ttft_at) >= since_s if since_s else slice(None)
    row.update(percentiles(np.asarray(sim.ttft)[keep], "ttft"))
    row.update(percentiles(sim.ttst, "ttst"))
    row.update(percentiles(sim.tpot, "tpot", 1000.0, "ms"))
    row.update(_storage(sim))
    row.update(_attention(sim, end))
    row.update(_links(sim))
    series = {"window_s": cfg.window_s, "snic_max_avg": _snic_ratio_series(sim).tolist(),
              "snic_tokens": sim.acct.snic[: sim.acct.num_windows].sum(axis=1).tolist()}
    return row, series


def _snic_ratio_series(sim) -> np.ndarray:
    snic = sim.acct.snic[: sim.acct.num_windows]
    if not len(snic):
        return np.zeros(0)
    mean = snic.mean(axis=1)
    return np.where(mean > 0, snic.max(axis=1) / np.maximum(mean, 1e-12), np.nan)


def _storage(sim) -> dict:
    cfg, m, acct = sim.cfg, sim.cfg.model, sim.acct
    snic = acct.snic[: acct.num_windows]
    per_node = snic.sum(axis=0) * m.bytes_per_token
    if len(snic):
        busy = snic.sum(axis=1) >= 0.5 * snic.sum(axis=1).max()
        ratio = _snic_ratio_series(sim)[busy]
        sat = saturated_windows(snic)
        util = snic[sat].mean() / (m.snic_tokens_per_s * cfg.window_s)
    else:
        ratio, util = np.zeros(0), 0.0
    return {"snic_read_gb": float(per_node.sum() / 1e9),
            "snic_read_gb_max_node": float(per_node.max() / 1e9),
            **node_balance(per_node),
            "snic_write_gb": float(acct.snic_write.sum() * m.bytes_per_token / 1e9),
            "snic_max_avg": float(np.nanmean(ratio)) if len(ratio) else None,
            "snic_util": float(util)}


def node_balance(per_node_bytes: np.ndarray) -> dict:
    """The balance metric (issue 20, item 4): each storage NIC's read bytes over the whole run
    (nodes in id order: PE nodes, then DE nodes) and their max / avg. 1.0 is a perfect
    spread; the windowed snic_max_avg above says how even it was moment to moment."""
    mean = float(per_node_bytes.mean()) if len(per_node_bytes) else 0.0
    return {"snic_node_gb": [float(b / 1e9) for b in per_node_bytes],
            "snic_bytes_max_avg": float(per_node_bytes.max() / mean) if mean > 0 else None}


def _attention(sim, end: float) -> dict:
    out = {}
    if not len(sim.attn_t):
        return out
    times, ratios = np.asarray(sim.attn_t), np.asarray(sim.attn_ratio)
    for pct in (5, 10, 20, 50):
        sel = times <= end * pct / 100
        out[f"attn_max_avg_{pct}pct"] = float(ratios[sel].mean()) if sel.any() else None
    return out


def _links(sim) -> dict:
    """CNIC and DRAM utilisation while storage is saturated (the §6 assumptions), averaged
    over the GPUs (CNIC) or nodes (DRAM) of each class."""
    cfg, m, acct = sim.cfg, sim.cfg.model, sim.acct
    if not acct.num_windows or sim.policy.is_io_free:
        return {f"{c}_util": None for c in CHANNELS}
    cls = acct.class_array()[saturated_windows(acct.snic[: acct.num_windows])].mean(axis=0)
    bytes_per_s = cls * m.bytes_per_token / cfg.window_s
    g, P, D = cfg.gpus_per_node, cfg.num_pe_nodes, cfg.num_de_nodes
    caps = [P * g * cfg.cnic_bytes_per_s, P * g * cfg.cnic_bytes_per_s,
            D * g * cfg.cnic_bytes_per_s, D * g * cfg.cnic_bytes_per_s,
            P * cfg.dram_bytes_per_s, D * cfg.dram_bytes_per_s]
    return {f"{c}_util": float(v / cap) for c, v, cap in zip(CHANNELS, bytes_per_s, caps)}
