from collections import deque

import pytest

from dualkv.sched.request import EngineReport, Request
from dualkv.sched.select import assign_des, assign_pes, pick_de_group, select_pe, shorter_queue_side


def eng(i, tok, seq=0, free=float("inf")):
    return EngineReport(i, seq, tok, free)


def req(rid, length=100, hit=50, gen=10):
    return Request(rid, length, hit, gen)


def test_c2_preferred_over_lighter_c3():
    engines = [eng(0, tok=10), eng(1, tok=500)]
    # engine 0 sits on a node with a long read queue (C3), engine 1 on a short one (C2)
    assert select_pe(engines, [2000, 100], alpha=1000, beta=1000) == 1


def test_c3_used_when_c2_empty_and_fewest_tokens_win():
    engines = [eng(0, tok=300), eng(1, tok=200)]
    assert select_pe(engines, [2000, 2000], alpha=1000, beta=1000) == 1


def test_c2_fewest_tokens_win():
    engines = [eng(0, tok=300), eng(1, tok=200), eng(2, tok=250)]
    assert select_pe(engines, [0, 0, 0], alpha=1000, beta=1000) == 1


def test_c1_never_gets_work_and_stop():
    engines = [eng(0, tok=1001), eng(1, tok=5000)]
    assert select_pe(engines, [0, 0], alpha=1000, beta=1000) == -1
    queue = deque([req(0), req(1)])
    assert assign_pes(queue, engines, [0, 0], 1000, 1000) == []
    assert len(queue) == 2


def test_assign_pes_updates_tokens_and_stops_at_beta():
    engines = [eng(0, tok=0), eng(1, tok=0)]
    queue = deque(req(i, length=400) for i in range(10))
    picks = assign_pes(queue, engines, [0, 0], alpha=1000, beta=1000)
    # each engine takes requests while tok <= beta: 0,400,800 -> 3 each, then both at 1200
    assert [i for _, i in picks] == [0, 1, 0, 1, 0, 1]
    assert [r.rid for r, _ in picks] == list(range(6))  # FIFO order kept
    assert engines[0].tok == 1200 and engines[0].seq == 3
    assert len(queue) == 4


def test_pick_de_group_fewest_tokens():
    assert pick_de_group({0: 50, 1: 20, 2: 20}) == 1


def test_de_low_set_fewest_requests():
    engines = [eng(0, tok=100, seq=3), eng(1, tok=150, seq=1), eng(2, tok=90, seq=5)]
    queue = deque([req(0, length=10, hit=5, gen=1)])
    picks = assign_des(queue, engines, z_margin=1.05)
    # Z = 1.05 * (10 + 340) / 3 = 122.5: engines 0 (110) and 2 (100) are low; 0 has fewer seq
    assert picks[0][1] == 0


def test_de_high_set_fewest_tokens_when_low_empty():
    engines = [eng(0, tok=100, seq=1), eng(1, tok=100, seq=0)]
    queue = deque([req(0, length=1000, hit=5, gen=1)])
    # Z = 1.05 * (1000 + 200) / 2 = 630 < 1100: no low engine; ties on tok -> lowest index
    engines[1].tok = 99
    assert assign_des(queue, engines, 1.05)[0][1] == 1


def test_de_hbm_fit_filters_and_stops():
    engines = [eng(0, tok=0, seq=0, free=50), eng(1, tok=500, seq=9, free=200)]
    queue = deque([req(0, length=100, hit=5, gen=10), req(1, length=100, hit=5, gen=10)])
    picks = assign_des(queue, engines, 1.05)
    assert [i for _, i in picks] == [1]  # only engine 1 fits 110 tokens; then nobody does
    assert engines[1].free_hbm_tokens == 90 and len(queue) == 1


def test_de_nothing_fits():
    engines = [eng(0, tok=0, free=10)]
    queue = deque([req(0)])
    assert assign_des(queue, engines, 1.05) == [] and len(queue) == 1


@pytest.mark.parametrize("pe_q,de_q,side", [(10, 5, "de"), (5, 10, "pe"), (7, 7, "pe")])
def test_read_side_shorter_queue(pe_q, de_q, side):
    assert shorter_queue_side(pe_q, de_q) == side


def test_least_loaded_matches_linear_argmin():
    import random

    from dualkv.sched.select import LeastLoaded

    rng = random.Random(1)
    loads = LeastLoaded(range(10))
    for _ in range(2000):
        g = rng.randrange(10)
        if rng.random() < 0.5:
            loads.set(g, rng.randrange(100))
        else:
            loads.add(g, rng.randrange(5))
        assert loads.argmin() == pick_de_group(loads.tokens)
