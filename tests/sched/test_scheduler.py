import pytest

from dualkv.errors import InvalidArgument
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig

PE = [GroupSpec(0, node_id=0, engine_ids=(0, 1)), GroupSpec(1, node_id=1, engine_ids=(2, 3))]
DE = [GroupSpec(2, node_id=2, engine_ids=(4, 5))]


def report(group, read_q=0, tok=(0, 0), free=float("inf")):
    return GroupReport(group.group_id, read_q,
                       [EngineReport(e, 0, t, free) for e, t in zip(group.engine_ids, tok)])


def test_config_validation():
    with pytest.raises(InvalidArgument):
        SchedulerConfig(policy="nope")
    with pytest.raises(InvalidArgument):
        SchedulerConfig(beta_tokens=0)
    with pytest.raises(InvalidArgument):
        SchedulerConfig(z_margin=0.9)
    with pytest.raises(InvalidArgument):
        Request(0, 10, 10, 1)  # a hit must leave at least one token to compute


def test_dualpath_places_after_both_fetches_and_reads_shorter_side():
    sched = Scheduler(SchedulerConfig(alpha_tokens=1e6, beta_tokens=1e6), PE, DE)
    r = Request(0, 1000, 900, 10)
    sched.submit(r)
    got = sched.fetch_for_pe_group(report(PE[0], read_q=5000))
    assert got.assigned == [r] and got.placed == [] and r.pe == 0
    got = sched.fetch_for_de_group(report(DE[0], read_q=100, free=1e6))
    assert got.placed == [r] and r.de in (4, 5)
    assert r.read_side == "de" and sched.read_q[2] == 100 + 900


def test_round_robin_spreads_and_reads_pe_side():
    sched = Scheduler(SchedulerConfig(policy="basic"), PE, DE)
    reqs = [Request(i, 100, 50, 5) for i in range(4)]
    for r in reqs:
        sched.submit(r)
    a = sched.fetch_for_pe_group(report(PE[0], tok=(10**9, 10**9)))  # no beta gating
    b = sched.fetch_for_pe_group(report(PE[1]))
    sched.fetch_for_de_group(report(DE[0], free=0))  # no HBM gating either
    assert [r.pe for r in reqs] == [0, 1, 2, 3]
    assert len(a.assigned) == 2 and len(b.assigned) == 2
    assert [r.de for r in reqs] == [4, 5, 4, 5]
    assert all(r.read_side == "pe" for r in reqs)


def test_dpl_alternates_side_and_oracle_reads_nothing():
    sched = Scheduler(SchedulerConfig(policy="dpl"), PE, DE)
    reqs = [Request(i, 100, 50, 5) for i in range(4)]
    for r in reqs:
        sched.submit(r)
    for g in PE:
        sched.fetch_for_pe_group(report(g))
    sched.fetch_for_de_group(report(DE[0]))
    assert sorted(r.read_side for r in reqs) == ["de", "de", "pe", "pe"]
    oracle = Scheduler(SchedulerConfig(policy="oracle"), PE, DE)
    r = Request(0, 100, 50, 5)
    oracle.submit(r)
    oracle.fetch_for_pe_group(report(PE[0]))
    oracle.fetch_for_de_group(report(DE[0], free=1e6))
    assert r.is_placed and all(q == 0 for q in oracle.read_q.values())


def test_de_phase1_goes_to_group_with_fewest_tokens():
    de = [GroupSpec(2, 2, (4,)), GroupSpec(3, 3, (5,))]
    sched = Scheduler(SchedulerConfig(), PE, de)
    # group 2 reports heavy load first; the drained request must go to group 3's queue
    sched.submit(Request(0, 100, 50, 5))
    got = sched.fetch_for_de_group(GroupReport(2, 0, [EngineReport(4, 5, 10**6, 1e9)]))
    assert got.assigned == [] and sched.has_de_work(3) and not sched.has_de_work(2)
    got = sched.fetch_for_de_group(GroupReport(3, 0, [EngineReport(5, 0, 0, 1e9)]))
    assert [r.de for r in got.assigned] == [5]


@pytest.mark.parametrize("policy", ["dualpath", "basic"])
def test_report_de_load_is_a_fetch_with_no_work(policy):
    """report_de_load must leave the scheduler exactly as a fetch by a group with no work
    does (the simulator sends it instead of such a fetch): same read queues, same phase-1
    loads, so the next request goes to the same DE group."""
    de = [GroupSpec(2, node_id=2, engine_ids=(4, 5)), GroupSpec(3, node_id=3, engine_ids=(6, 7))]
    states = []
    for use_report in (False, True):
        sched = Scheduler(SchedulerConfig(policy=policy), PE, de)
        assert not sched.has_de_work(3)
        rep = report(de[1], read_q=700, tok=(500, 300), free=1e6)
        if use_report:
            sched.report_de_load(rep)
        else:
            got = sched.fetch_for_de_group(rep)
            assert got.assigned == got.placed == got.woken_groups == []
        r = Request(0, 100, 50, 5)
        sched.submit(r)
        sched.fetch_for_pe_group(report(PE[0]))
        got = sched.fetch_for_de_group(report(de[0], read_q=10, tok=(0, 0), free=1e6))
        loads = sched.de_loads.tokens if sched._smart else None
        states.append((dict(sched.read_q), loads, r.de, r.read_side, got.woken_groups))
    assert states[0] == states[1]
    assert states[0][0][3] == 700  # the report's read queue was recorded


def test_read_node_is_the_pe_node_on_the_pe_side_and_the_de_node_on_the_de_side():
    from dualkv.sched import Request

    r = Request(1, 100, 64, 8)
    r.pe_node, r.de_node = 3, 7
    r.read_side = "pe"
    assert r.read_node == 3
    r.read_side = "de"
    assert r.read_node == 7


@pytest.mark.parametrize("policy", ["dualpath", "basic"])
def test_fetch_into_a_reused_result_equals_a_fresh_one(policy):
    """`into` (the simulator's reused FetchResult, here holding stale entries) is cleared and
    filled with exactly what the same fetch without it returns."""
    def run(reuse):
        sched = Scheduler(SchedulerConfig(policy=policy, alpha_tokens=1e6, beta_tokens=1e6), PE, DE)
        into = None
        if reuse:
            from dualkv.sched import FetchResult
            into = FetchResult([Request(99, 10, 0, 1)], [Request(98, 10, 0, 1)], [7])  # stale
        out = []
        for i in range(6):
            sched.submit(Request(i, 1000 + i, 500, 10))
            for group, make in ((PE[i % 2], sched.fetch_for_pe_group), (DE[0], sched.fetch_for_de_group)):
                got = make(report(group, free=1e6), into)
                out.append(([(r.rid, r.pe, r.de, r.read_side) for r in got.assigned],
                            [r.rid for r in got.placed], list(got.woken_groups)))
        return out

    assert run(True) == run(False)
