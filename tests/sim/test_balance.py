"""The balance metric (issue 20, item 4): every run reports each storage NIC's read bytes and
their max/avg, for DualPath and for the round_robin read side."""
import numpy as np
import pytest

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.report import node_balance
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic


def test_node_balance_is_max_over_mean_of_the_node_totals():
    got = node_balance(np.array([1e9, 1e9, 2e9]))
    assert got["snic_node_gb"] == [1.0, 1.0, 2.0]
    assert got["snic_bytes_max_avg"] == pytest.approx(1.5)
    assert node_balance(np.zeros(3))["snic_bytes_max_avg"] is None  # nothing read (oracle)


@pytest.mark.parametrize("policy", ["dualpath", "round_robin", "basic"])
def test_every_run_reports_each_nics_read_bytes(policy):
    cfg = SimConfig(get_preset("ds27b", snic_tokens_per_s=2e5), policy, 1, 2, gpus_per_node=2)
    work = agentic("32k", 24)
    row, _ = run_offline(cfg, work)
    per_node = row["snic_node_gb"]
    assert len(per_node) == 3
    total = float(work.hit.sum()) * cfg.model.bytes_per_token / 1e9
    assert sum(per_node) == pytest.approx(total, rel=1e-9)
    assert row["snic_bytes_max_avg"] == pytest.approx(max(per_node) / (total / 3))
    if policy == "basic":  # PE-side reads only: the DE NICs idle, the worst spread there is
        assert per_node[1:] == [0.0, 0.0] and row["snic_bytes_max_avg"] == pytest.approx(3.0)
    else:  # both read sides are used
        assert min(per_node) > 0
