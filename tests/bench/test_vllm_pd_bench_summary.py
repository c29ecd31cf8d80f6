"""`dualkv bench vllm-pd`'s rounds and summary on canned runs: the order rotates each round,
medians per policy, and each policy's turns/s paired with the same round's Basic run (the
engine runs themselves need the vLLM venv and are measured in bench/RESULTS.md)."""
import pytest

from dualkv.bench import vllm_pd
from dualkv.errors import InvalidArgument

POLICIES = ("basic", "dualpath", "oracle")


def run(policy, rnd, turns_per_s, max_avg):
    return {"policy": policy, "round": rnd, "order": 0, "turns_per_s": turns_per_s,
            "jct_s": 32.0 / turns_per_s, "read_max_avg": max_avg, "snic_mbps": 1.0,
            "cnic_mbps": 8.0}


def test_each_policy_runs_first_once_per_three_rounds():
    orders = [vllm_pd.round_order(POLICIES, r) for r in range(3)]
    assert orders == [["basic", "dualpath", "oracle"], ["dualpath", "oracle", "basic"],
                      ["oracle", "basic", "dualpath"]]
    assert {o[0] for o in orders} == set(POLICIES)


def test_ratios_pair_each_run_with_the_same_rounds_basic():
    # rounds listed out of order for dualpath: the pairing is by round, not by position
    runs = {"basic": [run("basic", 0, 0.5, 3.0), run("basic", 1, 0.25, 3.0), run("basic", 2, 1.0, 3.0)],
            "dualpath": [run("dualpath", 2, 1.5, 1.1), run("dualpath", 0, 1.0, 1.2),
                         run("dualpath", 1, 0.5, 1.0)],
            "oracle": [run("oracle", r, 2.0, 1.1) for r in range(3)]}
    basic, dualpath, oracle = vllm_pd.summarize(runs)
    assert basic["turns_per_s_over_basic_per_round"] == [1.0, 1.0, 1.0]
    assert dualpath["turns_per_s_over_basic_per_round"] == [1.5, 2.0, 2.0]
    assert dualpath["turns_per_s_over_basic"] == 2.0
    assert dualpath["turns_per_s"] == 1.0 and dualpath["read_max_avg"] == 1.1
    assert oracle["turns_per_s_over_basic_per_round"] == [4.0, 8.0, 2.0]
    assert oracle["turns_per_s_over_basic"] == 4.0
    assert "snic_mbps" not in dualpath and dualpath["runs"] == 3


def test_without_basic_there_is_no_ratio():
    rows = vllm_pd.summarize({"oracle": [run("oracle", r, 2.0, 1.1) for r in range(3)]})
    assert "turns_per_s_over_basic" not in rows[0] and rows[0]["turns_per_s"] == 2.0


def test_fewer_than_three_rounds_is_refused_before_anything_starts():
    with pytest.raises(InvalidArgument, match="at least 3 rounds"):
        vllm_pd.main(["--rounds", "2"])
