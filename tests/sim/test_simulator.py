import pytest

from dualkv.errors import InvalidArgument
from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import agentic


def small(policy, pe=1, de=2, **model):
    return SimConfig(get_preset("ds27b", **model), policy, pe, de, gpus_per_node=2)


@pytest.mark.parametrize("policy", ["basic", "dpl", "dualpath", "oracle", "round_robin", "split"])
def test_conservation(policy):
    work = agentic("32k", 12)
    sim = Simulator(small(policy), work).run()
    c = sim.c
    assert sim.num_done == work.num_agents
    assert list(sim.turn) == work.start[1:].tolist()  # every turn ran
    assert len(sim.ttft) == work.num_turns
    read = 0 if policy == "oracle" else int(work.hit.sum()) * sim.bpt
    assert sim.bytes_read == read
    acct_tokens = sim.acct.snic[: sim.acct.num_windows].sum()
    assert acct_tokens == pytest.approx(read / sim.bpt, rel=1e-9)
    for state in (c.buf_used, c.read_q, c.seq, c.tok, c.de_alloc, c.de_assigned):
        assert all(v == 0 for v in state)
    assert min(sim.ttft) > 0 and min(sim.tpot) > 0 and (sim.acct.snic >= 0).all()


def test_oracle_dualpath_basic_order_when_io_bound():
    work = agentic("32k", 48)
    slow_storage = dict(snic_tokens_per_s=2e5)
    jct = {p: run_offline(small(p, **slow_storage), work)[0]["jct_s"] for p in ("oracle", "dualpath", "basic")}
    assert jct["oracle"] <= jct["dualpath"] <= jct["basic"]
    assert jct["basic"] > 1.1 * jct["dualpath"]  # the DE SNICs add bandwidth


def test_same_seed_same_result():
    work = agentic("32k", 10)
    a, _ = run_offline(small("dualpath"), work)
    b, _ = run_offline(small("dualpath"), work)
    assert a == b


def test_config_validation():
    with pytest.raises(InvalidArgument):
        SimConfig(get_preset("ds27b"), "dualpath", 0, 1)
    with pytest.raises(InvalidArgument):
        get_preset("gpt5")
    with pytest.raises(InvalidArgument):
        SimConfig(get_preset("ds27b"), cnic_kv_share=0)
