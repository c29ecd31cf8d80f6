"""The P/D planner (issue 20, item 5): every split under each policy, the recommendation and
the sensitivity, in a pool of processes."""
import pytest

from dualkv.errors import InvalidArgument
from dualkv.sim.plan import PlanSpec, plan, recommend, run_split


def small(**kw):
    base = dict(model="ds27b", num_nodes=4, maxlen="32k", num_agents=16, gpus_per_node=2)
    return PlanSpec(**dict(base, **kw))


def test_spec_checks_its_question():
    with pytest.raises(InvalidArgument, match="either agents"):
        small(rates=(0.1,))  # both
    with pytest.raises(InvalidArgument, match="either agents"):
        small(num_agents=None)  # neither
    with pytest.raises(InvalidArgument, match=">= 2 nodes"):
        small(num_nodes=1)
    with pytest.raises(InvalidArgument):
        small(policies=("fastest",))
    with pytest.raises(InvalidArgument, match="SLO"):
        small(num_agents=None, rates=(0.1,), ttft_slo_s=0)
    assert small().splits() == [(1, 3), (2, 2), (3, 1)]
    cfg = small(fetch_period_s=0.05, bytes_per_token=1000).config("dualpath", 1, 3)
    assert (cfg.fetch_period_s, cfg.model.bytes_per_token, cfg.num_de_nodes) == (0.05, 1000, 3)


def test_pool_gives_the_rows_a_run_here_gives():
    """Two processes run the 2 policies x 3 splits; each row is what run_split computes in
    this process (the simulator is deterministic), in policy then split order."""
    spec = small()
    rows = plan(spec, num_workers=2)
    assert [(r["policy"], r["split"]) for r in rows] == [
        (p, s) for p in ("basic", "dualpath") for s in ("1P3D", "2P2D", "3P1D")]
    assert rows[4] == run_split((spec, "dualpath", 2, 2))
    assert all(r["jct_s"] > 0 for r in rows)


def test_recommendation_is_the_best_split_and_the_loss_around_it():
    spec = small()
    rows = [dict(policy="basic", split=f"{p}P{4 - p}D", pe_nodes=p, jct_s=j)
            for p, j in ((1, 300.0), (2, 200.0), (3, 250.0))]
    rows += [dict(policy="dualpath", split=f"{p}P{4 - p}D", pe_nodes=p, jct_s=j)
             for p, j in ((1, 100.0), (2, 100.0), (3, 150.0))]
    rec = recommend(spec, rows)
    assert rec["basic"]["best_split"] == "2P2D" and rec["basic"]["best_jct_s"] == 200.0
    assert rec["basic"]["neighbour_loss"] == pytest.approx(0.5)  # 1P3D: 300 / 200
    assert rec["basic"]["spread"] == pytest.approx(0.5)
    assert rec["dualpath"]["best_split"] == "1P3D"  # a tie goes to fewer prefill nodes
    assert rec["dualpath"]["neighbour_loss"] == 0.0 and rec["dualpath"]["spread"] == pytest.approx(0.5)


def test_online_recommendation_maximises_capacity():
    spec = small(num_agents=None, rates=(0.1, 0.2))
    rows = [dict(policy=p, split=f"{k}P{4 - k}D", pe_nodes=k, capacity_aps=c)
            for p in ("basic", "dualpath") for k, c in ((1, 0.1), (2, 0.2), (3, 0.0))]
    rec = recommend(spec, rows)
    assert rec["dualpath"]["best_split"] == "2P2D" and rec["dualpath"]["best_capacity_aps"] == 0.2
    assert rec["dualpath"]["spread"] == pytest.approx(1.0)  # 3P1D meets no rate
    assert rec["dualpath"]["neighbour_loss"] == pytest.approx(1.0)


def test_online_split_row_has_capacity_and_the_run_at_the_last_rate():
    spec = small(num_nodes=2, num_agents=None, rates=(0.02, 50.0), max_s=600.0,
                 policies=("dualpath",))
    row = run_split((spec, "dualpath", 1, 1))
    assert row["capacity_aps"] == 0.02  # 50 agents/s swamps one PE node: the first miss
    assert row["last_aps"] == 50.0 and row["last_ttft_mean_s"] > spec.ttft_slo_s
