"""The online workloads of the demo: Poisson agent arrivals whose turns chain, and the
Mooncake trace scaled down with its prefix sharing intact (no processes started here)."""
from argparse import Namespace

import numpy as np
import pytest

from dualkv.demo.cluster_online import agentic_sessions, mooncake_sessions
from dualkv.workloads.mooncake import load_trace


def args(**kw):
    base = dict(agents=50, rounds=2, context=100, append=7, gen=4, seed=1, rate=2.0,
                trace=None, trace_requests=60, trace_block_tokens=16, max_prompt=400)
    return Namespace(**{**base, **kw})


def test_agents_arrive_as_a_poisson_process_and_chain_their_turns():
    sessions = agentic_sessions(args(), 256)
    arrivals = np.array([s.arrival_s for s in sessions])
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) > 0)
    gaps = np.diff(arrivals)
    assert 0.25 < gaps.mean() < 1.0  # rate 2/s: mean gap 0.5 s
    s = sessions[0]
    assert len(s.prompt) == 100 and s.max_new_tokens == 4
    prompt, gen = s.next_turn(s.prompt, [1, 2, 3, 4])
    assert prompt[:104] == s.prompt + [1, 2, 3, 4] and len(prompt) == 111 and gen == 4
    assert s.next_turn(prompt, [5, 6, 7, 8]) is not None
    assert s.next_turn(prompt, [5, 6, 7, 8]) is None  # rounds + 1 turns in all
    assert all(a.arrival_s == 0 for a in agentic_sessions(args(rate=0.0), 256))


def test_trace_requests_share_exactly_the_prefixes_of_the_trace():
    a = args(rate=0.0)
    trace = load_trace(None, limit=a.trace_requests)
    sessions = mooncake_sessions(a, 1024)
    assert len(sessions) == len(trace)
    for request, session in zip(trace, sessions):
        assert session.arrival_s == request.timestamp_ms / 1e3
        want = min(-(-request.input_length * 16 // 512), 400)
        assert len(session.prompt) == want
        assert session.max_new_tokens == max(2, min(4, request.output_length))
    for i in range(len(trace)):
        for j in range(i):
            shared = next((k for k, (x, y) in enumerate(zip(trace[i].hash_ids, trace[j].hash_ids))
                           if x != y), min(len(trace[i].hash_ids), len(trace[j].hash_ids)))
            p, q = np.array(sessions[i].prompt), np.array(sessions[j].prompt)
            n = min(len(p), len(q), shared * 16)
            assert np.array_equal(p[:n], q[:n])
            if shared * 16 + 16 <= min(len(p), len(q)):  # the first differing block differs
                assert not np.array_equal(p[:shared * 16 + 16], q[:shared * 16 + 16])
    rescaled = mooncake_sessions(args(rate=5.0), 1024)
    span = rescaled[-1].arrival_s - rescaled[0].arrival_s
    assert span == pytest.approx(len(trace) / 5.0)
