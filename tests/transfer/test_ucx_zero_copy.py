"""One-sided puts over TCP run as UCX's zero-copy protocol, not its software emulation
(issue 15, item 4), read from UCX's own protocol table (UCX_PROTO_INFO=y). Checked on UCX
1.22 (`pip install -e .[ucx]`); 1.13, Debian's, has no tcp protocol for puts."""
import pytest

from dualkv._native import C
from dualkv.bench.transfer_protocols import probe

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")


def _version_or_skip(result):
    major, minor = (int(x) for x in result["ucx_version"].split(".")[:2])
    if (major, minor) < (1, 22):
        pytest.skip(f"UCX {result['ucx_version']}: zero-copy puts over tcp are checked on 1.22 "
                    "(1.13 has no tcp put protocol at all); pip install -e .[ucx]")


def test_puts_over_tcp_are_zero_copy():
    result = probe("tcp")
    _version_or_skip(result)
    descriptions = [desc for _, desc, _ in result["put_protocols"]]
    assert descriptions and all("zero-copy" in d for d in descriptions), result


def test_a_finite_rendezvous_threshold_is_what_made_them_emulated():
    """The cause, kept visible: the agent's RNDV_THRESH=inf default overridden back to UCX's
    own ('auto') turns the same put into software emulation."""
    result = probe("tcp", ucx_options={"RNDV_THRESH": "auto"})
    _version_or_skip(result)
    assert [desc for _, desc, _ in result["put_protocols"]] == ["software emulation"], result
