from types import SimpleNamespace

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import SteadyState, capacity_search, run_online


def fake(ttft_at, ttft):
    return SimpleNamespace(ttft_at=ttft_at, ttft=ttft)


def test_steady_state_stops_when_ttft_flat_or_over_slo():
    stop = SteadyState()
    flat = fake([float(t) for t in range(0, 4000, 10)], [1.0] * 400)
    verdicts = [stop(flat, now) for now in range(150, 4000, 150)]
    assert stop.verdict == "steady" and verdicts.index(True) == 12  # 30 min + one window
    over = SteadyState()
    assert over(fake([100.0], [5.0]), 150.0) and over.verdict == "ttft_over_slo"


def test_online_run_and_capacity_search():
    cfg = SimConfig(get_preset("ds27b"), "dualpath", 1, 1, gpus_per_node=2)
    row, _ = run_online(cfg, "32k", 0.05, max_s=200)
    assert row["aps"] == 0.05 and row["ttft_mean_s"] > 0 and isinstance(row["meets_slo"], bool)
    capacity, rows = capacity_search(cfg, "32k", [0.1, 0.02], max_s=200)
    assert rows[0]["aps"] == 0.02  # the grid runs in increasing load
    met = [r["aps"] for r in rows if r["meets_slo"]]
    assert capacity == (max(met) if met else 0.0)


def test_capacity_is_the_largest_rate_before_the_first_miss():
    from dualkv.sim.run import largest_meeting, meets_slo

    assert meets_slo(4.0, 50.0) and not meets_slo(4.1, 10.0) and not meets_slo(1.0, 51.0)
    assert not meets_slo(None, 10.0) and meets_slo(5.0, 200.0, ttft_slo_s=6.0, tpot_slo_ms=250.0)
    runs = []

    def run_at(rate):  # the SLO holds up to 1.0: mean TTFT grows with the rate
        runs.append(rate)
        return {"rate": rate, "meets_slo": meets_slo(3.0 * rate, 10.0, ttft_slo_s=3.0)}

    capacity, rows = largest_meeting([2.0, 0.5, 1.0, 4.0], run_at)
    assert capacity == 1.0 and runs == [0.5, 1.0, 2.0]  # in order, stopped at the first miss
    assert [r["meets_slo"] for r in rows] == [True, True, False]
    assert largest_meeting([1.0, 2.0], lambda r: {"meets_slo": False}) == (0.0, [{"meets_slo": False}])
