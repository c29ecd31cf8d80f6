"""A turn larger than a DE GPU's HBM is refused, not silently left out of the JCT."""
import pytest

from dualkv.errors import InvalidArgument
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline, run_online
from dualkv.sim.workload import agentic


def test_turn_larger_than_de_hbm_is_refused():
    # 64K turns reach ~65K KV tokens; 50K per DE GPU once let the scheduler hold such a turn
    # (and its agent) forever while run_offline reported the other agents' JCT.
    work = agentic("64k", 32)
    need = int((work.prompt + work.gen).max())
    cfg = SimConfig(get_preset("qwen32b", de_hbm_tokens=need - 1), "oracle", 1, 2)
    with pytest.raises(InvalidArgument, match="DE HBM"):
        run_offline(cfg, work)
    with pytest.raises(InvalidArgument, match="DE HBM"):
        run_online(cfg, "64k", 0.01, max_s=10, workload=work)


def test_every_agent_finishes_at_the_qwen_preset():
    work = agentic("64k", 8)
    row, _ = run_offline(SimConfig(get_preset("qwen32b"), "oracle", 1, 2), work)
    assert row["turns_done"] == work.num_turns
