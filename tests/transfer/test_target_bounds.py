"""The target of a put checks its range against what it registered, since the initiator only
checks the sizes the peer declared: a notice closing a put that wrote outside the real region
is refused and counted, so that layer never counts as landed; malformed peer region info is
refused at connect (issue 16, item 2). Two agents in one process, on host memory."""
import numpy as np
import pytest

from dualkv import errors
from dualkv._native import C

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")

from dualkv.transfer import Agent, TransferConfig  # noqa: E402

BLOCK = 4096


@pytest.fixture
def pair():
    a, b = Agent(TransferConfig(op_timeout_s=5.0)), Agent(TransferConfig(op_timeout_s=5.0))
    yield a, b
    a.close()
    b.close()


def altered(info, factor):
    """The target's info with every region declared `factor` times larger than registered."""
    regions = [dict(r, size=r["size"] * factor) for r in info["regions"]]
    return dict(info, regions=regions)


def test_put_notice_outside_the_registered_region_is_refused(pair):
    a, b = pair
    backing = np.zeros(BLOCK * 8, dtype=np.uint8)  # b registers only the first half
    rb = b.register(backing[:BLOCK * 4])
    src = np.random.default_rng(1).integers(0, 256, BLOCK, dtype=np.uint8)
    ra = a.register(src)
    peer = a.connect(altered(b.local_info(), 2))
    b.connect(a.local_info())  # a is a joined peer: only the range is wrong
    for layer, offset in ((0, 0), (1, BLOCK * 5), (2, BLOCK * 3)):
        a.wait(a.put(peer, ra, rb.id, [0], [offset], [BLOCK], request_id=1, layer=layer), 5)
    b.wait_notice(1, 2, 5)  # notices of one peer arrive in order: layer 1's was handled
    assert list(b.notices(1)) == [0, 2]
    assert b.num_out_of_range_notices == 1 and b.num_refused_notices == 0


def test_prepared_put_outside_the_registered_region_is_refused(pair):
    a, b = pair
    backing = np.zeros(BLOCK * 8, dtype=np.uint8)
    rb = b.register(backing[:BLOCK * 2])
    ra = a.register(np.ones(BLOCK, dtype=np.uint8))
    peer = a.connect(altered(b.local_info(), 4))
    b.connect(a.local_info())
    prepared = a.prepare_put(peer, ra, rb.id, [0], [0], [BLOCK], request_id=3, num_layers=4,
                             remote_layer_stride=BLOCK)  # layers 2 and 3 lie past the region
    for layer in range(4):
        prepared.post(layer)
    prepared.wait(5)
    a.wait(a.send_notice(peer, 3, 99), 5)  # a data-less notice after them: always accepted
    b.wait_notice(3, 99, 5)
    assert list(b.notices(3)) == [0, 1, 99]
    assert b.num_out_of_range_notices == 2


@pytest.mark.parametrize("change, match", [
    (dict(size=0), "no registered range"),
    (dict(size=-4096), "no registered range"),
    (dict(base=0), "no registered range"),
    (dict(base=(1 << 64) - 10), "no registered range"),
    (dict(size=1.5), "integer"),
    (dict(rkey="text"), "bytes rkey"),
])
def test_malformed_peer_regions_are_refused_at_connect(pair, change, match):
    a, b = pair
    b.register(np.zeros(BLOCK, dtype=np.uint8))
    info = b.local_info()
    bad = dict(info, regions=[dict(info["regions"][0], **change)])
    with pytest.raises(errors.InvalidArgument, match=match):
        a.connect(bad)
    assert a.peers() == []
