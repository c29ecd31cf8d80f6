"""The PE's prefill batching in the local cluster: `dualkv.sched.PrefillBatcher`, the one the
simulator runs, for every policy.

The driver keeps one ready queue per PE (a deque of `sched.Request`s, `tag` = the turn's Job)
and asks the PE's batcher for the next batch whenever that PE is idle. A batch is a list of
`Chunk(request, cached, bsz, is_last)`: requests in FIFO order while the predicted attention
time stays within the compute quota, the one that overflows cut to the tokens that still fit
(chunked prefill); it stays at the head of the queue and its next chunk opens the PE's next
batch.

The cost model is the simulator's (`dualkv.demo.cluster_predict` builds its preset from the
same `model_attention`): attention FLOPs of the model's shape, and seconds =
FlopCurve.linear(pe_flops_per_s). `pe_flops_per_s` is a measured figure: the demo passes the
one its calibration run measured (dualkv.demo.calibration, cached under
~/.cache/dualkv/calibration); without one the batcher uses DEFAULT_PE_FLOPS_PER_S, what that
calibration measured for the demo's model on the 2-core machine this cluster was built on.

The batch cap (`max_kv_tokens`, the sum of cached + new tokens of a batch) is the PE's
`max_tokens` for every policy: the reference PE's staging ring and receive area are sized for
that many tokens, whether it streams layer by layer or not. The simulator caps Basic's batch
by a separate PE HBM size (paper.md §16, no layerwise prefill); the reference PE has no such
memory apart from those buffers, so here Basic and DualPath batch alike and differ only in
how the engine moves KV (the policy's `is_layerwise` and read side).
"""
from __future__ import annotations

from dualkv.sched import AttentionFlops, FlopCurve, PrefillBatcher, SchedulerConfig

# The demo's calibration (dualkv.demo.calibration: an Oracle run on other conversations) on
# this project's 2-core build machine measured 6.50e10 FLOP/s of prefill for the demo model
# (~/.cache/dualkv/calibration/demo-34c48e385a7d0353.json, 2026-12-02).
DEFAULT_PE_FLOPS_PER_S = 6.5e10
DEFAULT_QUOTA_S = SchedulerConfig().compute_quota_s  # the paper's 300 ms


def model_attention(cfg) -> AttentionFlops:
    """Prefill attention FLOPs of a dense model: QK^T and PV, 2 FLOPs per multiply-add, for
    every query head, per (query, key) pair and layer."""
    return AttentionFlops(cfg.num_layers, 2.0 * 2 * cfg.num_heads * cfg.head_dim)


def pe_batcher(cfg, max_tokens: int, pe_flops_per_s: float | None = None,
               quota_s: float | None = DEFAULT_QUOTA_S) -> PrefillBatcher:
    """One PE's batcher (quota_s None: every ready request that fits max_tokens)."""
    curve = FlopCurve.linear(pe_flops_per_s or DEFAULT_PE_FLOPS_PER_S)
    return PrefillBatcher(model_attention(cfg), curve, quota_s, max_kv_tokens=max_tokens)
