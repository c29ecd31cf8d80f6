"""The control plane's client: typed errors, and a dead engine process noticed at once."""
import subprocess
import sys
import time

import pytest
import zmq

from dualkv.cluster.protocol import Client, error_reply, pack, unpack
from dualkv.errors import InvalidArgument, PeerDisconnected

def test_client_reports_a_dead_engine_process_at_once(tmp_path):
    """A request to an engine process that died raises PeerDisconnected within a poll slice,
    not after the request's timeout."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    client = Client(zmq.Context.instance(), f"ipc://{tmp_path}/none.sock",
                    is_alive=lambda: proc.poll() is None)
    proc.kill()
    proc.wait()
    start = time.monotonic()
    with pytest.raises(PeerDisconnected):
        client.call("hello", timeout_s=30)
    assert time.monotonic() - start < 2.0
    client.close()


def test_messages_round_trip_and_errors_keep_their_class():
    assert unpack(pack({"op": "x", "keys": b"\x00\x01", "n": [1, 2]})) == \
        {"op": "x", "keys": b"\x00\x01", "n": [1, 2]}
    reply = error_reply(InvalidArgument("bad"))
    assert reply == {"ok": False, "error": "InvalidArgument", "message": "bad"}
    assert error_reply(KeyError("k"))["error"] == "DualKVError"


def test_live_but_silent_engine_times_out_at_the_deadline(tmp_path):
    from dualkv.errors import TimedOut

    client = Client(zmq.Context.instance(), f"ipc://{tmp_path}/silent.sock", is_alive=lambda: True)
    start = time.monotonic()
    with pytest.raises(TimedOut):
        client.call("hello", timeout_s=0.6)
    assert 0.5 < time.monotonic() - start < 2.0
    client.close()
