"""The split read policy in the simulator (issue 20, item 6): parts on both nodes, the
buffers and queues they hold, and the channel accounting of a split."""
from dataclasses import replace

import numpy as np
import pytest

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.metrics import path_tokens, split_path_tokens
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import Workload, agentic


def small(policy, pe=1, de=2, **model):
    return SimConfig(get_preset("ds27b", **model), policy, pe, de, gpus_per_node=2)


def one_turn(hit, prompt, num_agents=1):
    """num_agents single-turn agents at t = 0, each with the same long hit."""
    n = num_agents
    return Workload("one", np.full(n, prompt), np.full(n, hit), np.full(n, 8),
                    np.arange(n + 1), np.zeros(n))


@pytest.mark.parametrize("hit,miss", [(640, 64), (0, 5), (30_000, 300)])
def test_split_channels_are_the_two_paths_added(hit, miss):
    assert split_path_tokens(hit, 0, miss) == path_tokens("pe", hit, miss)
    assert split_path_tokens(0, hit, miss) == path_tokens("de", hit, miss)
    a, b = hit // 3, hit - hit // 3  # a split is linear between the two
    pe, de = path_tokens("pe", hit, miss), path_tokens("de", hit, miss)
    for got, x, y in zip(split_path_tokens(a, b, miss), pe, de):
        assert got * hit == pytest.approx(x * a + y * b) or hit == 0


def test_a_lone_request_reads_half_on_each_node_and_starts_sooner():
    """With both queues empty the split gives each node half the hit, so the read, which
    dominates this request's TTFT on slow storage, takes half as long."""
    slow = dict(snic_tokens_per_s=1e5)
    work = one_turn(64 * 500, 64 * 500 + 100)
    whole = Simulator(small("dualpath", **slow), work).run()
    split = Simulator(small("split", **slow), work).run()
    assert (whole.num_split, split.num_split) == (0, 1)
    snic = split.acct.snic[: split.acct.num_windows].sum(axis=0)
    assert snic[0] == pytest.approx(64 * 250) and snic[1:].sum() == pytest.approx(64 * 250)
    read_s = 64 * 500 / 1e5
    assert whole.ttft[0] - split.ttft[0] == pytest.approx(read_s / 2, rel=0.05)


def test_split_run_frees_everything_and_reads_every_hit_once():
    work = agentic("32k", 24)
    sim = Simulator(small("split", snic_tokens_per_s=2e5), work).run()
    assert sim.num_done == work.num_agents and not sim.split_left
    assert sim.num_split > 0  # the queues did differ by less than a hit at times
    assert sim.bytes_read == int(work.hit.sum()) * sim.bpt
    c = sim.c
    for state in (c.buf_used, c.read_q, c.snic_busy):
        assert all(v == 0 for v in state)


def test_split_reads_finish_with_buffers_too_small_for_the_queue():
    """Small host buffers make heads of NIC queues wait for buffer space. A split request
    that reserved its buffers must not wait behind such a head for its second part: the
    space it holds is what the head waits for (this run stalled with none of its 128 agents
    finished before reserve_split moved the second part to the head of its queue)."""
    model = get_preset("ds27b", snic_tokens_per_s=2e5)
    tight = replace(model, dram_bytes_per_node=100_000 * model.bytes_per_token)  # ~4 prompts
    work = agentic("32k", 128)
    sim = Simulator(SimConfig(tight, "split", 2, 1, gpus_per_node=4), work).run()
    assert sim.num_done == work.num_agents and not sim.split_left
    assert all(v == 0 for v in sim.c.buf_used)
