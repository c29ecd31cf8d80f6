"""Online runs of the demo's cluster: sessions arrive over time and run as soon as they can.

Workloads:
- agentic: `agents` conversations arriving as a Poisson process of `rate` agents/s, each
  `rounds` + 1 turns (the first stores its `context`, each later one reads the whole context
  back, appends `append` tokens and generates `gen`); an agent's next turn is submitted the
  moment its previous one finishes, so agents overlap (one's read and prefill run while
  another decodes).
- mooncake: the first `trace_requests` requests of the Mooncake conversation trace, each one
  turn at its trace timestamp (rescaled to `rate` requests/s on average when rate > 0). Every
  512-token trace block becomes its first `trace_block_tokens` tokens (deterministic per hash
  id, `dualkv.workloads.mooncake`), so requests share exactly the prefixes the trace shares,
  at a size this machine runs; prompts are capped at `max_prompt` tokens (whole blocks) and
  generation at `gen`.

Figures: TTFT (arrival -> first token), TTST (arrival -> second token, the first one decoded),
TPOT (decode time / (generated - 1)) as p50/p90/p99 over every turn, the means of TTFT and
TPOT (what the SLO capacity search judges), plus the run's makespan.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np

from dualkv.cluster.local import Session
from dualkv.demo.cluster_demo import nic_rates
from dualkv.errors import InvalidArgument


def agentic_sessions(args, vocab_size: int) -> list[Session]:
    rng = np.random.default_rng(args.seed)
    arrivals = np.zeros(args.agents)  # the first agent at t = 0, then exponential gaps
    if args.rate > 0:
        arrivals[1:] = np.cumsum(rng.exponential(1.0 / args.rate, args.agents - 1))
    sessions = []
    for arrival in arrivals:
        turns = {"n": 0}
        agent_rng = np.random.default_rng(rng.integers(1 << 62))

        def next_turn(prompt, generated, turns=turns, agent_rng=agent_rng):
            turns["n"] += 1
            if turns["n"] > args.rounds:
                return None
            return prompt + generated + agent_rng.integers(0, vocab_size, args.append).tolist(), args.gen

        context = agent_rng.integers(0, vocab_size, args.context).tolist()
        sessions.append(Session(float(arrival), context, args.gen, next_turn))
    return sessions


def mooncake_sessions(args, vocab_size: int) -> list[Session]:
    from dualkv.workloads.mooncake import TRACE_BLOCK_TOKENS, block_tokens_for_id, load_trace

    k = args.trace_block_tokens
    if not 0 < k <= TRACE_BLOCK_TOKENS:
        raise InvalidArgument(f"--trace-block-tokens must be in 1..{TRACE_BLOCK_TOKENS}, got {k}")
    trace = load_trace(args.trace, limit=args.trace_requests)
    stamps = np.array([r.timestamp_ms for r in trace], np.float64) / 1e3
    span = stamps[-1] - stamps[0]
    if args.rate > 0 and span > 0:  # the trace's shape, at `rate` requests/s on average
        stamps = (stamps - stamps[0]) * (len(trace) / span) / args.rate
    sessions = []
    for request, arrival in zip(trace, stamps):
        num_tokens = min(-(-request.input_length * k // TRACE_BLOCK_TOKENS), args.max_prompt)
        blocks = [block_tokens_for_id(h, vocab_size)[:k] for h in request.hash_ids]
        prompt = np.concatenate(blocks)[:num_tokens] if blocks else np.zeros(0, np.int32)
        if len(prompt) < 2:
            continue
        gen = max(2, min(args.gen, request.output_length))
        sessions.append(Session(float(arrival), prompt.tolist(), gen))
    return sessions


def _percentiles(name: str, values, scale: float = 1.0) -> dict:
    unit = "ms" if scale == 1e3 else "s"
    return {f"{name}_p{q}_{unit}": scale * float(np.percentile(values, q)) for q in (50, 90, 99)}


def _peak(spans) -> int:
    """The most turns between submission and completion at one moment (agents overlapping)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    return int(max(np.cumsum([d for _, d in events]))) if events else 0


def run_online(args, policy: str, cfg, progress=None) -> tuple[dict, list]:
    """Runs the online workload once; returns the row and every turn."""
    from dualkv.cluster.local import LocalCluster

    maker = mooncake_sessions if args.workload == "mooncake" else agentic_sessions
    sessions = maker(args, cfg.vocab_size)
    snic_mbps, cnic_mbps = nic_rates(args, policy)
    with tempfile.TemporaryDirectory(dir=args.root) as root, \
            LocalCluster(cfg, root, num_de=args.num_de, policy=policy,
                         block_tokens=args.block_tokens, snic_mbps=snic_mbps, cnic_mbps=cnic_mbps,
                         batch_invariant=False, max_tokens=max(8192, args.max_prompt)) as cluster:
        if progress is not None:
            cluster.on_poll = lambda role, reply: progress(len(reply.results))
        before, start = cluster.snic_bytes(), time.perf_counter()
        turns = [t for session in cluster.run_sessions(sessions) for t in session]
        makespan = time.perf_counter() - start
        after = cluster.snic_bytes()
    read = [after[role] - before[role] for role in after]
    row = dict(policy=policy, workload=args.workload, num_pe=1, num_de=args.num_de,
               sessions=len(sessions), rate=args.rate, snic_mbps=snic_mbps, turns=len(turns),
               turns_done=sum(len(t.generated) >= 2 for t in turns), jct_s=makespan,
               turns_per_s=len(turns) / makespan,
               cached_tokens=sum(t.num_cached_blocks for t in turns) * args.block_tokens,
               snic_mb=[round(b / 1e6, 3) for b in read],
               snic_max_avg=max(read) / (sum(read) / len(read)) if sum(read) else None)
    row["peak_turns_in_flight"] = _peak([(t.submitted_s, t.done_s) for t in turns])
    tpot = [t.decode_s / max(1, len(t.generated) - 1) for t in turns]
    row.update(ttft_mean_s=float(np.mean([t.ttft_s for t in turns])),
               tpot_mean_ms=1e3 * float(np.mean(tpot)))  # the SLO's figures (cluster_capacity)
    row.update(_percentiles("ttft", [t.ttft_s for t in turns]))
    row.update(_percentiles("ttst", [t.ttst_s for t in turns]))
    row.update(_percentiles("tpot", tpot, 1e3))
    return row, turns
