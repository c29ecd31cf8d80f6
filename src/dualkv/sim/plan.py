"""The P/D planner (issue 20, item 5): simulate every split of N nodes into P prefill and
N - P decode nodes under each policy, and say which split each policy wants and how much it
loses one node off that split.

Offline (a batch of agents at t = 0) the figure is the JCT, lower is better; online (Poisson
arrivals over a grid of rates) it is the SLO capacity, the largest rate of the grid whose run
meets the SLO, higher is better. The (split, policy) runs are independent, so they go to a
process pool: one simulator per core.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

from dualkv.errors import InvalidArgument
from dualkv.sched import get_policy
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import TPOT_SLO_S, TTFT_SLO_S, largest_meeting, run_offline, run_online
from dualkv.sim.workload import TRACE_SETS, agentic


@dataclass(frozen=True)
class PlanSpec:
    """One planning question. Exactly one of num_agents (offline) and rates (online)."""

    model: str
    num_nodes: int
    maxlen: str
    num_agents: int | None = None
    rates: tuple[float, ...] = ()
    ttft_slo_s: float = TTFT_SLO_S
    tpot_slo_ms: float = 1000 * TPOT_SLO_S
    policies: tuple[str, ...] = ("basic", "dualpath")
    gpus_per_node: int = 8
    max_s: float = 7200.0
    seed: int = 0
    fetch_period_s: float = 0.02
    bytes_per_token: int | None = None  # None: the model's stored KV bytes per token

    def __post_init__(self):
        get_preset(self.model)
        for p in self.policies:
            get_policy(p)
        if self.num_nodes < 2:
            raise InvalidArgument(f"a plan needs >= 2 nodes (one PE, one DE), got {self.num_nodes}")
        if self.maxlen not in TRACE_SETS:
            raise InvalidArgument(f"unknown maxlen {self.maxlen!r}; choose from {', '.join(TRACE_SETS)}")
        if (self.num_agents is None) == (not self.rates):
            raise InvalidArgument("give either agents (offline JCT) or arrival rates (online capacity)")
        if self.num_agents is not None and self.num_agents < 1:
            raise InvalidArgument(f"agents must be >= 1, got {self.num_agents}")
        if any(not r > 0 for r in self.rates):
            raise InvalidArgument(f"arrival rates must be > 0, got {list(self.rates)}")
        if not (self.ttft_slo_s > 0 and self.tpot_slo_ms > 0):
            raise InvalidArgument("the TTFT and TPOT SLOs must be > 0")

    @property
    def is_online(self) -> bool:
        return bool(self.rates)

    @property
    def figure(self) -> str:
        return "capacity_aps" if self.is_online else "jct_s"

    def splits(self) -> list[tuple[int, int]]:
        return [(p, self.num_nodes - p) for p in range(1, self.num_nodes)]

    def config(self, policy: str, pe: int, de: int) -> SimConfig:
        overrides = {"bytes_per_token": self.bytes_per_token} if self.bytes_per_token else {}
        return SimConfig(get_preset(self.model, **overrides), policy, pe, de,
                         gpus_per_node=self.gpus_per_node, fetch_period_s=self.fetch_period_s,
                         seed=self.seed)


def run_split(job: tuple[PlanSpec, str, int, int]) -> dict:
    """One (policy, split): its JCT or its SLO capacity, as one flat row. A module-level
    function so a process pool can send it to its workers."""
    spec, policy, pe, de = job
    cfg = spec.config(policy, pe, de)
    base = {"model": spec.model, "maxlen": spec.maxlen, "policy": policy, "pe_nodes": pe,
            "de_nodes": de, "split": f"{pe}P{de}D"}
    if not spec.is_online:
        row, _ = run_offline(cfg, agentic(spec.maxlen, spec.num_agents, spec.seed))
        return dict(base, agents=spec.num_agents, jct_s=row["jct_s"], turns_per_s=row["turns_per_s"],
                    ttft_mean_s=row["ttft_mean_s"], tpot_mean_ms=row["tpot_mean_ms"],
                    snic_bytes_max_avg=row["snic_bytes_max_avg"])
    runs = {}

    def run_at(aps):
        runs[aps] = run_online(cfg, spec.maxlen, aps, spec.max_s, ttft_slo_s=spec.ttft_slo_s,
                               tpot_slo_ms=spec.tpot_slo_ms)[0]
        return runs[aps]

    capacity, _ = largest_meeting(spec.rates, run_at)
    last = runs[max(runs)]  # the highest rate run: the first miss, or the top of the grid
    return dict(base, capacity_aps=capacity, ttft_slo_s=spec.ttft_slo_s, tpot_slo_ms=spec.tpot_slo_ms,
                last_aps=max(runs), last_ttft_mean_s=last["ttft_mean_s"],
                last_tpot_mean_ms=last["tpot_mean_ms"])


def plan(spec: PlanSpec, num_workers: int | None = None, progress=None) -> list[dict]:
    """Every (policy, split) row, in policy then split order. num_workers: processes
    (default: every core, at most one per run); 1 runs here, without a pool."""
    jobs = [(spec, policy, pe, de) for policy in spec.policies for pe, de in spec.splits()]
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    num_workers = max(1, min(num_workers, len(jobs)))
    if num_workers == 1:
        rows = []
        for job in jobs:
            rows.append(run_split(job))
            if progress is not None:
                progress(1)
        return rows
    # spawn: a fresh interpreter per worker, whatever threads the caller has running
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        rows = []
        for row in pool.imap(run_split, jobs):  # imap keeps the job order
            rows.append(row)
            if progress is not None:
                progress(1)
    return rows


def recommend(spec: PlanSpec, rows: list[dict]) -> dict[str, dict]:
    """Per policy: the recommended split and how sensitive the policy is to the split.

    best: the split with the best figure (lowest JCT / highest capacity; ties go to the
    split with fewer PE nodes). spread: how much worse the worst split is, relative to the
    best. neighbour_loss: how much worse the best split's neighbours (one node moved between
    prefill and decode) are, at most, relative to the best: the cost of being one node off."""
    out = {}
    for policy in spec.policies:
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["pe_nodes"])
        values = [r[spec.figure] for r in mine]
        if spec.is_online:
            i = max(range(len(values)), key=lambda k: (values[k], -k))
        else:
            i = min(range(len(values)), key=lambda k: (values[k], k))
        best = values[i]
        near = [values[k] for k in (i - 1, i + 1) if 0 <= k < len(values)]
        out[policy] = {"policy": policy, "best_split": mine[i]["split"], "best_pe_nodes": mine[i]["pe_nodes"],
                       f"best_{spec.figure}": best,
                       "spread": _loss(spec, best, _worst(spec, values)),
                       "neighbour_loss": max((_loss(spec, best, v) for v in near), default=0.0)}
    return out


def _worst(spec: PlanSpec, values: list[float]) -> float:
    return min(values) if spec.is_online else max(values)


def _loss(spec: PlanSpec, best: float, value: float) -> float | None:
    """Relative loss of `value` against `best`: extra JCT (offline) or lost capacity (online)."""
    if spec.is_online:
        return (best - value) / best if best > 0 else None
    return value / best - 1.0
