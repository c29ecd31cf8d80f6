"""Workloads as flat turn arrays: the agentic trace sets of paper.md §10 (generated per
§16.5) and a replay of Mooncake's conversation trace.

A Workload holds, per agent, a run of turns (prompt tokens, hit tokens, generated tokens)
and an arrival time. Turn i+1's prompt is turn i's prompt + generation + its own append; its
hit is that context rounded down to whole blocks (the partial block is recomputed, [I]).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dualkv.errors import InvalidArgument

# MaxLen -> (turns, total, context, gen/turn), paper.md §10
TRACE_SETS = {
    "32k": (32_768, 60, 28_639, 17_183, 148),
    "48k": (49_152, 106, 42_607, 25_120, 172),
    "64k": (65_536, 157, 55_958, 32_721, 176),
}
NUM_BASE = 500
SYNTHETIC_PROMPT = 64  # [GAP] length of the prepended random round; one block


@dataclass
class Workload:
    name: str
    prompt: np.ndarray  # int64 per turn
    hit: np.ndarray
    gen: np.ndarray
    start: np.ndarray  # per agent: index of its first turn (len num_agents + 1)
    arrival_s: np.ndarray  # per agent

    @property
    def num_agents(self) -> int:
        return len(self.arrival_s)

    @property
    def num_turns(self) -> int:
        return len(self.prompt)

    def summary(self) -> dict:
        turns = np.diff(self.start)
        return {"agents": self.num_agents, "turns_mean": float(turns.mean()),
                "hit_mean": float(self.hit.mean()), "prompt_mean": float(self.prompt.mean()),
                "gen_mean": float(self.gen.mean())}


def _lognormal(rng, mean, cv, size):
    sigma = np.sqrt(np.log1p(cv * cv))
    return rng.lognormal(np.log(mean) - sigma * sigma / 2, sigma, size)


@lru_cache(maxsize=8)
def base_trajectories(maxlen: str, seed: int = 0) -> tuple:
    """500 base trajectories as (append, gen) int arrays per trajectory, matched to the mean
    Turns, Total and Context of the set (paper.md §16.5)."""
    if maxlen not in TRACE_SETS:
        raise InvalidArgument(f"unknown trace set {maxlen!r}; choose from {', '.join(TRACE_SETS)}")
    cap, turns_mean, total_mean, ctx_mean, gen_mean = TRACE_SETS[maxlen]
    rng = np.random.default_rng(seed)
    # [I] turns are capped by MaxLen growth: every turn adds at least a mean generation
    max_turns = (cap - 5500) // gen_mean
    turns = _lognormal(rng, turns_mean, 0.6, NUM_BASE)
    for _ in range(20):  # rescale so the capped draws keep the mean
        turns = turns * turns_mean / np.clip(turns, 2, max_turns).mean()
    turns = np.rint(np.clip(turns, 2, max_turns)).astype(int)
    first = rng.uniform(3000, 8000, NUM_BASE)
    c, gamma = _fit_growth(turns, first, cap, total_mean, ctx_mean)
    totals = np.minimum(cap - 1, first + c * turns ** gamma)
    out = []
    for k in range(NUM_BASE):
        out.append(_one_trajectory(rng, int(turns[k]), first[k], totals[k], gen_mean))
    return tuple(out)


def _approx_means(turns, first, totals):
    growth = (totals - first) / turns  # per turn, append + generation
    ctx_sum = (turns - 1) * (first + growth) + growth * (turns - 1) * (turns - 2) / 2
    return totals.mean(), ctx_sum.sum() / turns.sum()


def _fit_growth(turns, first, cap, total_mean, ctx_mean):
    """Total_k = min(cap, A1 + c T^gamma): bisection on gamma (context), inside on c (total)."""
    def c_for(gamma):
        lo, hi = 0.0, 1e7
        for _ in range(60):
            mid = (lo + hi) / 2
            tot, _ = _approx_means(turns, first, np.minimum(cap - 1, first + mid * turns ** gamma))
            lo, hi = (mid, hi) if tot < total_mean else (lo, mid)
        return lo
    g_lo, g_hi = 0.0, 1.5
    for _ in range(40):
        gamma = (g_lo + g_hi) / 2
        _, ctx = _approx_means(turns, first, np.minimum(cap - 1, first + c_for(gamma) * turns ** gamma))
        g_lo, g_hi = (gamma, g_hi) if ctx < ctx_mean else (g_lo, gamma)
    return c_for(g_lo), g_lo


def _one_trajectory(rng, turns, first, total, gen_mean):
    growth = (total - first) / turns
    gen = np.maximum(1, np.rint(_lognormal(rng, min(gen_mean, 0.8 * growth), 0.6, turns))).astype(np.int64)
    budget = max(turns - 1, int(total - first - gen.sum()))
    weights = _lognormal(rng, 1.0, 0.8, turns - 1)
    appends = np.maximum(1, np.floor(weights / weights.sum() * budget)).astype(np.int64)
    return np.concatenate([[int(first)], appends]).astype(np.int64), gen


def agentic(maxlen: str, num_agents: int, seed: int = 0, arrival_s=None, block_tokens: int = 64) -> Workload:
    """num_agents agents: the first 500 are the base set; later ones sample a base trajectory
    and prepend one synthetic round (random prompt, one generated token) so no two agents
    share a prefix (paper.md §10)."""
    if num_agents < 1:
        raise InvalidArgument(f"num_agents must be >= 1, got {num_agents}")
    base = base_trajectories(maxlen, seed)
    rng = np.random.default_rng(seed + 1)
    picks = np.concatenate([np.arange(min(num_agents, NUM_BASE)),
                            rng.integers(0, NUM_BASE, max(0, num_agents - NUM_BASE))])
    # Every agent's rounds as indices into the base trajectories laid end to end (one pass of
    # array operations, not an array per agent); -1 marks a prepended synthetic round.
    base_len = np.array([len(a) for a, _ in base])
    base_start = np.cumsum(base_len) - base_len
    base_append = np.concatenate([a for a, _ in base])
    base_gen = np.concatenate([g for _, g in base])
    synthetic = (np.arange(num_agents) >= NUM_BASE).astype(np.int64)
    lengths = base_len[picks] + synthetic
    first = np.cumsum(lengths) - lengths  # each agent's first turn
    offset = np.arange(int(lengths.sum())) - np.repeat(first + synthetic, lengths)  # round in its base
    index = np.repeat(base_start[picks], lengths) + offset
    is_synthetic = offset < 0
    index[is_synthetic] = 0
    append = np.where(is_synthetic, SYNTHETIC_PROMPT, base_append[index])
    gen = np.where(is_synthetic, 1, base_gen[index])
    arrival = np.zeros(num_agents) if arrival_s is None else np.asarray(arrival_s, float)
    return _from_rounds(f"agentic-{maxlen}", append, gen, lengths, arrival, block_tokens)


def _from_rounds(name, append, gen, lengths, arrival, block_tokens) -> Workload:
    """A Workload from every agent's rounds end to end (append and generated tokens per
    round) and the number of rounds per agent."""
    start = np.concatenate([[0], np.cumsum(lengths)])
    step = append + gen
    cum = np.cumsum(step)
    ends = cum[start[1:] - 1]  # context after each agent's last turn
    agent_base = np.repeat(np.concatenate([[0], ends[:-1]]), lengths)  # cum before each agent
    context = cum - step - agent_base
    prompt = context + append
    hit = context // block_tokens * block_tokens
    return Workload(name, prompt.astype(np.int64), hit.astype(np.int64), gen.astype(np.int64),
                    start.astype(np.int64), arrival)


def poisson_arrivals(rate_per_s: float, num_agents: int, seed: int = 0) -> np.ndarray:
    if not rate_per_s > 0:
        raise InvalidArgument(f"arrival rate must be > 0, got {rate_per_s}")
    rng = np.random.default_rng(seed + 2)
    return np.cumsum(rng.exponential(1.0 / rate_per_s, num_agents))


def mooncake(path=None, limit: int | None = None, time_scale: float = 1.0, block_tokens: int = 64) -> Workload:
    """Mooncake's conversation trace: one single-turn agent per request, arriving at its
    timestamp x time_scale. A request's hit is its longest prefix of 512-token trace blocks
    seen in any earlier request (everything is written back, nothing evicted), kept below its
    prompt and rounded down to whole blocks."""
    from dualkv.workloads.mooncake import TRACE_BLOCK_TOKENS, load_trace

    requests = load_trace(path, limit)
    if not requests:
        raise InvalidArgument("the Mooncake trace is empty")
    seen, prompt, hit, gen, arrival = set(), [], [], [], []
    for r in requests:
        shared = 0
        for h in r.hash_ids:
            if h not in seen:
                break
            shared += 1
        seen.update(r.hash_ids)
        length = max(1, r.input_length)
        prompt.append(length)
        hit.append(min(shared * TRACE_BLOCK_TOKENS, length - 1) // block_tokens * block_tokens)
        gen.append(max(1, r.output_length))
        arrival.append(r.timestamp_ms / 1000.0 * time_scale)
    n = len(requests)
    return Workload("mooncake", np.array(prompt, np.int64), np.array(hit, np.int64),
                    np.array(gen, np.int64), np.arange(n + 1, dtype=np.int64), np.array(arrival))
