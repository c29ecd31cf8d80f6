"""The notice ping-pong of `dualkv bench transfer` runs through each API it reports."""
import pytest

from dualkv._native import C

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")


@pytest.mark.parametrize("api", ["python", "prepared", "native"])
def test_notice_pingpong_reports_one_positive_median_per_run(api):
    from dualkv.bench.transfer_latency import notice_latency_us

    medians = notice_latency_us(4096, 50, 2, api=api)
    assert len(medians) == 2 and all(0 < m < 1e5 for m in medians)


def test_unknown_api_is_refused():
    from dualkv.bench.transfer_latency import notice_latency_us

    with pytest.raises(ValueError, match="api"):
        notice_latency_us(4096, 10, 1, api="cython")
