"""The per-request read split (issue 20, item 6): the rule, and the Scheduler placing it."""
import pytest

from dualkv.errors import InvalidArgument
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig
from dualkv.sched.split import split_read, split_side

PE = [GroupSpec(0, node_id=0, engine_ids=(0, 1))]
DE = [GroupSpec(1, node_id=1, engine_ids=(2, 3))]


def test_split_equalises_the_two_queues_on_a_block_boundary():
    # pe_q + k == de_q + (hit - k): 1000 + k == 3000 + 6400 - k -> k = 4200 -> 4224 (66 blocks)
    k = split_read(6400, 1000, 3000, 64)
    assert k == 4224 and k % 64 == 0
    assert abs((1000 + k) - (3000 + 6400 - k)) <= 64  # within one block of even
    assert split_read(6400, 0, 0, 64) == 3200  # equal queues: half each


def test_split_gives_one_side_everything_when_the_other_leads_by_the_whole_hit():
    assert split_read(640, 10_000, 0, 64) == 0  # the PE queue is far ahead: all on the DE
    assert split_read(640, 0, 10_000, 64) == 640  # the DE queue is far ahead: all on the PE
    assert split_read(0, 0, 0, 64) == 0
    assert split_read(64, 0, 0, 64) == 64  # one block cannot be cut: a tie goes to the PE
    assert split_side(640, 640) == "pe" and split_side(0, 640) == "de"
    assert split_side(320, 640) == "split"


def _place(policy, pe_q, de_q, hit=6400):
    sched = Scheduler(SchedulerConfig(policy=policy, alpha_tokens=1e9, beta_tokens=1e9), PE, DE)
    r = Request(0, hit + 100, hit, 5)
    sched.submit(r)
    sched.fetch_for_pe_group(GroupReport(0, pe_q, [EngineReport(e, 0, 0) for e in (0, 1)]))
    got = sched.fetch_for_de_group(GroupReport(1, de_q, [EngineReport(e, 0, 0, 1e9) for e in (2, 3)]))
    assert got.placed == [r]
    return sched, r


def test_scheduler_splits_and_both_read_queues_grow_by_their_part():
    sched, r = _place("split", 1000, 3000)
    assert r.read_side == "split" and r.pe_read_tokens == 4224 and r.de_read_tokens == 6400 - 4224
    assert r.read_parts() == [(0, 4224), (1, 2176)]
    assert sched.read_q == {0: 1000 + 4224, 1: 3000 + 2176}
    with pytest.raises(InvalidArgument, match="split"):
        r.read_node  # two nodes read it: a caller must not pick one


def test_whole_request_policy_keeps_one_side_and_sets_its_part():
    sched, r = _place("dualpath", 1000, 3000)
    assert r.read_side == "pe" and r.pe_read_tokens == 6400 and r.read_parts() == [(0, 6400)]
    assert sched.read_q == {0: 1000 + 6400, 1: 3000}
    _, r = _place("dualpath", 3000, 1000)
    assert r.read_side == "de" and r.pe_read_tokens == 0 and r.read_parts() == [(1, 6400)]


def test_split_falls_back_to_one_side_when_a_queue_leads_by_the_hit():
    sched, r = _place("split", 20_000, 0)
    assert r.read_side == "de" and r.pe_read_tokens == 0 and r.read_node == 1
    assert sched.read_q == {0: 20_000, 1: 6400}


def test_round_robin_alternates_sides_whatever_the_queues():
    sched = Scheduler(SchedulerConfig(policy="round_robin", alpha_tokens=1e9, beta_tokens=1e9), PE, DE)
    reqs = [Request(i, 200, 128, 5) for i in range(4)]
    for r in reqs:
        sched.submit(r)
    sched.fetch_for_pe_group(GroupReport(0, 0, [EngineReport(e, 0, 0) for e in (0, 1)]))
    sched.fetch_for_de_group(GroupReport(1, 10**6, [EngineReport(e, 0, 0, 1e9) for e in (2, 3)]))
    sides = [r.read_side for r in reqs]
    assert sides == ["pe", "de", "pe", "de"]  # a DE queue of 1e6 tokens changes nothing


def test_split_block_must_be_positive():
    with pytest.raises(InvalidArgument):
        SchedulerConfig(policy="split", split_block_tokens=0)
