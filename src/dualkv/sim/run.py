"""Offline and online runs, and the SLO capacity search (paper.md §10, §16.5)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from dualkv.errors import InvalidArgument
from dualkv.sim.config import SimConfig
from dualkv.sim.report import summarize
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import Workload, agentic, poisson_arrivals

TTFT_SLO_S, TPOT_SLO_S = 4.0, 0.050
STEADY_WINDOW_S, STEADY_LOOKBACK_S, STEADY_TOLERANCE = 150.0, 1800.0, 0.05


def run_offline(cfg: SimConfig, work: Workload, progress=None) -> tuple[dict, dict]:
    """All agents start at t = 0; the JCT is the last agent's finish."""
    check_fits(cfg, work)
    sim = Simulator(cfg, replace(work, arrival_s=np.zeros(work.num_agents)), progress).run()
    if sim.num_done < work.num_agents:  # a JCT over the finished agents alone would be wrong
        raise InvalidArgument(f"{work.num_agents - sim.num_done} of {work.num_agents} agents "
                              f"never finished: the simulated cluster stalled")
    row, series = summarize(sim)
    row["jct_s"] = max(sim.finish_t)
    row["turns_per_s"] = work.num_turns / row["jct_s"]
    return row, series


def check_fits(cfg: SimConfig, work: Workload) -> None:
    """A turn whose KV (prompt + generation) exceeds one DE GPU's HBM can never be placed: the
    scheduler would hold it, and its agent, forever. Refuse such a run up front."""
    need = int((work.prompt + work.gen).max()) if work.num_turns else 0
    if need > cfg.model.de_hbm_tokens:
        raise InvalidArgument(f"a turn of {work.name} needs {need} KV tokens in DE HBM, but "
                              f"{cfg.model.name} holds {cfg.model.de_hbm_tokens} per DE GPU")


class SteadyState:
    """The paper's stopping rule: stop once the mean TTFT of the last 150 s is within 5% of
    the mean 30 min earlier (steady), or as soon as it passes the 4 s SLO (overloaded)."""

    def __init__(self, ttft_slo_s: float = TTFT_SLO_S):
        self.ttft_slo_s = ttft_slo_s
        self.history: list[float] = []
        self.verdict = "end_of_run"

    def __call__(self, sim, now: float) -> bool:
        at, ttft = np.asarray(sim.ttft_at), np.asarray(sim.ttft)
        sel = at >= now - STEADY_WINDOW_S
        mean = float(ttft[sel].mean()) if sel.any() else 0.0
        self.history.append(mean)
        if mean > self.ttft_slo_s:
            self.verdict = "ttft_over_slo"
            return True
        back = int(STEADY_LOOKBACK_S / STEADY_WINDOW_S)
        if len(self.history) > back and mean > 0:
            old = self.history[-1 - back]
            if old > 0 and abs(mean - old) / old < STEADY_TOLERANCE:
                self.verdict = "steady"
                return True
        return False


def run_online(cfg: SimConfig, maxlen: str, aps: float, max_s: float = 7200.0,
               workload: Workload | None = None, ttft_slo_s: float = TTFT_SLO_S,
               tpot_slo_ms: float = 1000 * TPOT_SLO_S) -> tuple[dict, dict]:
    """Poisson agent arrivals at `aps` agents/s, each replaying its trajectory from round 0.
    With `workload` given (e.g. the Mooncake trace), its own arrival times are used. The SLO
    (mean TTFT, mean TPOT) decides `meets_slo` and stops a run whose TTFT passes it."""
    if workload is None:
        num_agents = int(aps * max_s) + 1
        workload = agentic(maxlen, num_agents, cfg.seed, poisson_arrivals(aps, num_agents, cfg.seed),
                           cfg.block_tokens)
    check_fits(cfg, workload)
    stop = SteadyState(ttft_slo_s)
    sim = Simulator(cfg, workload).run(until=max_s, monitor=stop, monitor_period=STEADY_WINDOW_S)
    row, series = summarize(sim, since_s=sim.now / 2)
    row.update(aps=aps, stop=stop.verdict,
               meets_slo=meets_slo(row["ttft_mean_s"], row["tpot_mean_ms"], ttft_slo_s, tpot_slo_ms)
               and stop.verdict != "ttft_over_slo")
    return row, series


def meets_slo(ttft_mean_s, tpot_mean_ms, ttft_slo_s: float = TTFT_SLO_S,
              tpot_slo_ms: float = 1000 * TPOT_SLO_S) -> bool:
    """The SLO of the capacity search (paper.md §10): mean TTFT and mean TPOT within bounds
    (4 s and 50 ms at the paper's scale); a run without either figure misses it."""
    return (ttft_mean_s is not None and tpot_mean_ms is not None
            and ttft_mean_s <= ttft_slo_s and tpot_mean_ms <= tpot_slo_ms)


def largest_meeting(grid, run_at, progress=None) -> tuple[float, list[dict]]:
    """Capacity: runs `run_at(rate)` (a row with `meets_slo`) over the grid in increasing
    order and returns the largest rate that meets the SLO (0.0 if none) and the rows. Stops at
    the first rate that misses it (load only grows along the grid)."""
    rows, capacity = [], 0.0
    for rate in sorted(grid):
        row = run_at(rate)
        rows.append(row)
        if progress is not None:
            progress(1)
        if not row["meets_slo"]:
            break
        capacity = rate
    return capacity, rows


def capacity_search(cfg: SimConfig, maxlen: str, grid, max_s: float = 7200.0, progress=None):
    """The simulator's capacity: the largest APS of the grid whose online run meets the SLO."""
    return largest_meeting(grid, lambda aps: run_online(cfg, maxlen, aps, max_s)[0], progress)
