"""kv_connector_extra_config validation and namespaces: bad input is a clear error."""
import pytest

pytest.importorskip("vllm")

from dualkv.errors import InvalidArgument  # noqa: E402
from dualkv.integrations.vllm import DualKVConnector  # noqa: E402
from dualkv.integrations.vllm.config import ConnectorConfig  # noqa: E402
from dualkv.integrations.vllm.keys import block_keys  # noqa: E402


def test_extra_config_is_parsed_and_checked():
    config = ConnectorConfig.from_extra({"root": "/blocks", "layerwise": "false",
                                         "pool_slots": "8", "timeout_s": 5})
    assert (config.layerwise, config.pool_slots, config.timeout_s) == (False, 8, 5.0)
    with pytest.raises(InvalidArgument, match="root"):
        ConnectorConfig.from_extra({})
    with pytest.raises(InvalidArgument, match="unknown kv_connector_extra_config keys"):
        ConnectorConfig.from_extra({"root": "/b", "shared_storage_path": "/x"})
    with pytest.raises(InvalidArgument, match="load_path"):
        ConnectorConfig.from_extra({"root": "/b", "load_path": "gpu"})


def test_piecewise_cudagraph_follows_layerwise():
    assert DualKVConnector.requires_piecewise_for_cudagraph({"root": "/b"})
    assert not DualKVConnector.requires_piecewise_for_cudagraph({"layerwise": False})


def test_block_keys_take_the_last_hash_of_each_block_and_pad_short_ones():
    hashes = [bytes([i]) * 32 for i in range(6)]
    keys = block_keys(hashes, 1, 3, stride=2)  # blocks 1, 2 of 2 hashes each
    assert [bytes(k) for k in keys] == [hashes[3], hashes[5]]
    short = block_keys([b"\x01" * 16], 0, 1)
    assert bytes(short[0]) == b"\x01" * 16 + b"\x00" * 16
    with pytest.raises(InvalidArgument):
        block_keys([b"\x01" * 40], 0, 1)


def test_emulated_nics_pace_reads_and_honour_deadlines(tmp_path):
    import time

    from dualkv.errors import TimedOut
    from dualkv.integrations.vllm.pacing import NicPacer

    assert NicPacer(ConnectorConfig(root="/b")).storage_read(1 << 30) == 0.0  # off: no wait
    node = f"pacing-test-{time.monotonic_ns()}"
    pacer = NicPacer(ConnectorConfig(root="/b", traffic_node=node, snic_gbps=0.01,
                                     cnic_gbps=0.001))
    start = time.monotonic()
    first = pacer.storage_read(5_000_000)   # 0.5 s at 10 MB/s
    second = pacer.storage_read(5_000_000)  # queued behind the first
    assert second - first == pytest.approx(0.5, rel=0.01)
    assert first >= start + 0.4  # a burst of 1 MiB at most goes at once
    assert pacer.network_read(1_000_000) >= start + 0.9  # its own bucket: 1 s at 1 MB/s
    with pytest.raises(TimedOut):
        pacer.wait_until(second, deadline=start + 0.1)
    pacer.wait_until(first, deadline=first + 1)
    assert time.monotonic() >= first
    with pytest.raises(InvalidArgument):
        ConnectorConfig(root="/b", snic_gbps=-1)
