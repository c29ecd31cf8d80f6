"""The fixed per-forward PE cost (paper.md §16.1/§16.4): a PE's throughput grows with its batch
and saturates as in Fig. 3 right, so Basic's HBM cap (small batches) costs throughput that
layerwise prefill (no cap) recovers. Without the fixed term neither holds."""
import numpy as np
import pytest

from dualkv.sim.config import FIG3_REQUEST, SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import Workload, agentic

CACHED, NEW = FIG3_REQUEST
FIG3 = {5: 2.6, 10: 2.9, 20: 3.0}  # paper.md §1: relative throughput at batch 5, 10, 20


def pe_throughput(batch: int, **model) -> float:
    """Requests/s of one PE GPU that runs `batch` Fig. 3 requests (30K cached + 300 new) per
    forward, I/O free. The quota admits exactly `batch` of them (the next would need a chunk
    below one token). The first forward starts with the first ready request alone, so
    throughput is taken over the forwards after it, which run back to back."""
    m = get_preset("ds660b", de_hbm_tokens=10**9, **model)
    rounds = 4
    n = 1 + rounds * batch
    one = m.attention(CACHED, NEW) / m.pe_flops_per_s
    work = Workload("fig3", np.full(n, CACHED + NEW), np.full(n, CACHED), np.ones(n, np.int64),
                    np.arange(n + 1), np.zeros(n))
    cfg = SimConfig(m, "oracle", 1, 1, gpus_per_node=1, compute_quota_s=batch * one * (1 + 1e-6),
                    beta_tokens=1e12)
    sim = Simulator(cfg, work).run()
    first = np.asarray(sim.first_t)
    assert sim.num_done == n and np.sum(first == first.min()) == 1
    return (n - 1) / (first.max() - first.min())


def test_throughput_rises_with_batch_and_saturates_like_fig3():
    base = pe_throughput(1)
    rel = {b: pe_throughput(b) / base for b in (2, 5, 10, 20)}
    assert rel[2] < rel[5] < rel[10] < rel[20]
    for b, paper in FIG3.items():
        assert rel[b] == pytest.approx(paper, rel=0.15)
    assert rel[20] / rel[10] < 1.15  # saturating: doubling the batch adds little


def test_without_fixed_cost_throughput_is_flat():
    base = pe_throughput(1, pe_fixed_requests=0.0)
    assert pe_throughput(10, pe_fixed_requests=0.0) / base == pytest.approx(1.0, rel=0.02)


def compute_bound_jct(policy: str, **model) -> float:
    # storage, compute NICs and decode ~free: only the PE batch size separates Basic and Layer
    m = get_preset("ds27b", snic_tokens_per_s=1e10, pe_hbm_tokens=1, tpot_light_s=1e-4,
                   tpot_full_s=1e-4, **model)
    cfg = SimConfig(m, policy, 1, 2, gpus_per_node=2, cnic_bytes_per_s=1e15)
    return run_offline(cfg, agentic("32k", 24))[0]["jct_s"]


def test_small_basic_cap_is_slower_than_layerwise_when_compute_bound():
    assert compute_bound_jct("basic") > 1.3 * compute_bound_jct("layer")
    # the gap is the fixed cost: without it a batch of one runs as fast as a full one
    flat = {p: compute_bound_jct(p, pe_fixed_requests=0.0) for p in ("basic", "layer")}
    assert flat["basic"] == pytest.approx(flat["layer"], rel=0.1)
