"""The reference cluster moves a request's hit through one side's buffer only, so the split
read policy (issue 20, item 6) must be refused up front with a clear error, not fail inside
a placement (Request.read_node raises for a split)."""
import pytest

from dualkv.errors import InvalidArgument

torch = pytest.importorskip("torch")

from dualkv.cluster.sched_proc import SchedulerServer  # noqa: E402
from dualkv.engine import ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=256, hidden=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, ffn=128)


def test_scheduler_process_refuses_split_and_runs_round_robin():
    with pytest.raises(InvalidArgument, match="splits a request's read"):
        SchedulerServer("split", 1, 2)
    assert SchedulerServer("round_robin", 1, 2).sched.policy.side == "rr"


def test_local_cluster_refuses_split_before_starting_anything(tmp_path):
    pytest.importorskip("dualkv.transfer")
    from dualkv.cluster.local import LocalCluster

    with pytest.raises(InvalidArgument, match="local cluster cannot run"):
        LocalCluster(CFG, str(tmp_path), num_de=2, policy="split")
    assert list(tmp_path.iterdir()) == []  # no block store, no processes
