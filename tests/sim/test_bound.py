"""The §6 bound: with saturated 50 GB/s storage NICs (s = 1, g = 8, M = 500 GB/s), no CNIC
or DRAM link saturates for 1/7 <= P/D <= 7/2, and one does outside."""
import pytest

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.report import summarize
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import agentic

LINKS = ("pe_cnic_read_util", "pe_cnic_write_util", "de_cnic_read_util", "de_cnic_write_util",
         "pe_dram_util", "de_dram_util")


def io_bound_run(pe, de):
    bpt = 78_000
    model = get_preset("ds660b", bytes_per_token=bpt, snic_tokens_per_s=50e9 / bpt,
                       pe_flops_per_s=1e18, tpot_light_s=0.001, tpot_full_s=0.001)
    work = agentic("32k", 40 * (pe + de))
    # compute is free here, so beta (5 s of prefill) would be unbounded: cap it at a few requests
    cfg = SimConfig(model, "dualpath", pe, de, window_s=2.0, beta_tokens=1e5)
    sim = Simulator(cfg, work).run(until=40.0)
    row, _ = summarize(sim)
    assert row["snic_util"] > 0.8  # the bound assumes saturated storage NICs
    return row


@pytest.mark.parametrize("pe,de", [(1, 2), (2, 1)])
def test_inside_bound_nothing_else_saturates(pe, de):
    row = io_bound_run(pe, de)
    assert max(row[k] for k in LINKS) < 1.0


def test_too_few_prefill_nodes_saturate_pe_cnic():
    row = io_bound_run(1, 12)  # P/D = 1/12 < 1/7
    assert row["pe_cnic_write_util"] > 1.0


def test_too_few_decode_nodes_saturate_de_side():
    row = io_bound_run(6, 1)  # P/D = 6 > 7/2
    assert max(row["de_cnic_write_util"], row["de_dram_util"]) > 1.0
