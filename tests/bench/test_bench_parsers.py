"""The reference tools' parsers on their own output, captured from fio 3.33 and ucx_perftest
(UCX 1.13, UCX_TLS=tcp) on this machine, and the paired-rounds ratio."""
import os

import pytest

from dualkv.bench import fio, ucx_perftest
from dualkv.bench.report import ratio_of_rounds, with_reference, with_rounds
from dualkv.errors import InvalidArgument

DATA = os.path.join(os.path.dirname(__file__), "data")
MIB = 1024 * 1024


def canned(name: str) -> str:
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def test_put_bw_reads_the_whole_run_not_the_last_interval():
    # Final: 300 0.120 205680.238 20006.310 4.86 49.98 5 50 -- "average" is the last
    # interval (4.86 MB/s), "overall" the whole run (49.98 MB/s)
    res = ucx_perftest.parse(canned("ucx_perftest_put_bw_tcp.txt"), "ucp_put_bw")
    assert res["iterations"] == 300
    assert res["bw_gbps"] == pytest.approx(49.98 * MIB / 1e9)
    assert res["avg_us"] == pytest.approx(20006.310)  # overhead (usec) overall
    assert res["p50_us"] == pytest.approx(0.120)
    assert res["columns"]["bandwidth (MB/s) average"] == pytest.approx(4.86)


def test_get_and_latency_tests_name_their_time_column_latency():
    get = ucx_perftest.parse(canned("ucx_perftest_get_tcp.txt"), "ucp_get")
    assert get["bw_gbps"] == pytest.approx(46.20 * MIB / 1e9)
    assert get["avg_us"] == pytest.approx(21643.220)
    assert get["p50_us"] == pytest.approx(17066.759)
    lat = ucx_perftest.parse(canned("ucx_perftest_put_lat_tcp.txt"), "ucp_put_lat")
    assert lat["iterations"] == 2000
    assert lat["p50_us"] == pytest.approx(39.732)
    assert lat["avg_us"] == pytest.approx(11047.698)  # not the last interval's 32393.956


def test_columns_are_found_by_header_name_not_position():
    out = canned("ucx_perftest_put_bw_tcp.txt")
    names = ucx_perftest.column_names(out.splitlines())
    assert names[:3] == ["Stage", "# iterations", "overhead (usec) 50.0%ile"]
    assert names[5:7] == ["bandwidth (MB/s) average", "bandwidth (MB/s) overall"]
    assert names[-1] == "message rate (msg/s) overall"


def test_perftest_output_without_a_result_or_header_is_an_error():
    with pytest.raises(RuntimeError, match="printed no result"):
        ucx_perftest.parse("[1700000000.0] ucp_ep.c:1500 error: connection refused\n")
    final_only = "\n".join(line for line in canned("ucx_perftest_get_tcp.txt").splitlines()
                           if not line.startswith("|"))
    with pytest.raises(ValueError, match="no column header"):
        ucx_perftest.parse(final_only)


def test_fio_read_bandwidth_is_the_jobs_bw_bytes():
    out = "note: both iodepth >= 1 and synchronous I/O engine are selected\n"
    assert fio.parse_read_bw(out + canned("fio_read.json")) == 1048576000.0


def test_a_failed_fio_job_is_an_error_not_a_figure():
    with pytest.raises(RuntimeError, match="error 2"):
        fio.parse_read_bw(canned("fio_read_error.json"))
    with pytest.raises(RuntimeError, match="no JSON"):
        fio.parse_read_bw("fio: failed parsing iodepth=x\n")


def test_ratio_of_rounds_pairs_each_round():
    # the disk halves its speed in round 2 for both sides: paired ratios stay at 2
    median, ratios = ratio_of_rounds([2.0, 1.0, 2.2], [1.0, 0.5, 1.0])
    assert ratios == [2.0, 2.0, 2.2]
    assert median == 2.0
    row = with_rounds({"block_bytes": 1}, "read_gbps", "fio", [2.0, 1.0, 2.2], [1.0, 0.5, 1.0])
    assert row["ratio_of_rounds"] == 2.0 and row["ratios_of_rounds"] == [2.0, 2.0, 2.2]
    assert row["read_gbps"] == 2.0 and row["ref_read_gbps"] == 1.0 and row["ratio"] == 2.0
    assert row["num_rounds"] == 3 and row["higher_is_better"] is True


def test_ratio_of_rounds_refuses_unpaired_or_empty_rounds():
    with pytest.raises(InvalidArgument):
        ratio_of_rounds([1.0, 2.0], [1.0])
    with pytest.raises(InvalidArgument):
        ratio_of_rounds([], [])
    with pytest.raises(InvalidArgument):
        ratio_of_rounds([1.0], [0.0])


def test_rows_say_whether_higher_is_better():
    assert with_reference({"p50_us": 2.0}, "p50_us", "x", 1.0)["higher_is_better"] is False
    assert with_reference({"gbps": 2.0}, "gbps", "x", 1.0)["higher_is_better"] is True
    assert with_reference({"turns_per_s": 2.0}, "turns_per_s", "basic", 1.0)["higher_is_better"]
    assert with_reference({"jct_s": 2.0}, "jct_s", "x", 1.0)["higher_is_better"] is False
