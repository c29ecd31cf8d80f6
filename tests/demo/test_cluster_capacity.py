"""The demo's SLO capacity search, without processes: its grid, and its default TTFT bound
scaled to the emulated storage NIC (the search itself is the simulator's, tests/sim)."""
import pytest

from dualkv.cli import build_parser
from dualkv.demo.cluster_capacity import default_ttft_slo_s, parse_rates
from dualkv.demo.cluster_demo import demo_model
from dualkv.errors import InvalidArgument


def demo_args(*argv):
    return build_parser().parse_args(["demo", "--slo-capacity", *argv])


def test_default_ttft_bound_is_two_idle_reads_of_a_context():
    small = ("--hidden", "64", "--layers", "2")  # Full Blocks of 36 KiB (incl. the header page)
    args = demo_args(*small, "--snic-mbps", "0.2", "--context", "1024")
    assert default_ttft_slo_s(args, demo_model(args)) == pytest.approx(2 * 16 * 36864 / 0.2e6)
    slower = demo_args(*small, "--snic-mbps", "0.1", "--context", "512")
    assert default_ttft_slo_s(slower, demo_model(slower)) == pytest.approx(2 * 8 * 36864 / 0.1e6)
    assert args.ttft_slo_s is None and args.tpot_slo_ms == 300.0


def test_rates_are_sorted_positive_numbers():
    assert parse_rates("0.3, 0.1,0.2,0.1") == [0.1, 0.2, 0.3]
    for bad in ("", "0.1,0", "a,1", "-1"):
        with pytest.raises(InvalidArgument):
            parse_rates(bad)
