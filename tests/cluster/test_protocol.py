"""The control plane: typed messages that round trip and refuse malformed input, typed errors,
and a dead engine process noticed at once."""
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from dualkv.cluster import messages as m
from dualkv.cluster.protocol import Client, error_reply, serve
from dualkv.errors import InvalidArgument, OutOfMemory, PeerDisconnected

PREFILL_REQUEST = m.PrefillRequest(rid=3, prompt=[1, 2, 3], cached=1, end=2, is_last=False,
                                   read_side="de", hit_keys=b"\x00" * 32, num_hit_blocks=1,
                                   ready_at=12.5, de_peer=2, de_region=4,
                                   slot_offsets=[0, 8192], recv_offset=64)
ADMIT_REQUEST = m.AdmitRequest(rid=3, prompt=[1, 2, 3], first_token=7, max_new_tokens=4,
                               num_cached_blocks=1, prior_key=b"\x01" * 32, pe_peer=1)
REQUESTS = [
    m.Submit(requests=[m.SubmitRequest(rid=1, prompt_tokens=40, hit_tokens=32, gen_tokens=6)]),
    m.Place(), m.Down(engine=1), m.Up(engine=1), m.Stop(), m.Hello(), m.Stats(), m.Poll(),
    m.Connect(info={"uid": 5, "address": b"\x02\x03", "regions": [{"id": 1}]}),
    m.Open(rid=3, num_tokens=40, max_new_tokens=6, hit_keys=b"\x00" * 64, read_side="pe",
           pe_peer=1, pe_recv_region=2, pe_recv_offset=128),
    m.Admit(requests=[ADMIT_REQUEST]), m.Drop(rids=[3, 4]), m.Drop(),
    m.Prefill(mode="basic", requests=[PREFILL_REQUEST]),
]
REPLIES = [
    m.Ack(), m.Error(error="OutOfMemory", message="full"),
    m.Placed(placed=[m.Placement(rid=1, pe=0, de=2, read_side="de")], num_waiting=3, no_pe=False),
    m.HelloReply(info={"uid": 5, "address": b"\x02"}, pool_region=1, recv_region=2),
    m.Connected(peer=9), m.Opened(slot_offsets=[0, 4096], num_hit_blocks=1, ready_at=3.25),
    m.Admitted(num_running=2), m.Dropped(num_dropped=1), m.StatsReply(snic_bytes=1 << 40),
    m.Polled(results=[m.DecodeResult(rid=3, generated=[5, 6], num_written_blocks=1,
                                     admitted_at=1.0, second_at=None, done_at=2.0)],
             progress=[(4, 7)], free_tokens=96),
    m.Prefilled(results=[m.PrefillResult(first_token=7, num_cached_blocks=1, done_at=4.5),
                         m.PrefillResult(first_token=None, num_cached_blocks=1, done_at=4.5)]),
]


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
        client.call(m.Hello(), timeout_s=30)
    assert time.monotonic() - start < 2.0
    client.close()


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda msg: type(msg).__name__)
def test_every_request_round_trips(msg):
    assert m.decode_request(m.encode(msg)) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=lambda msg: type(msg).__name__)
def test_every_reply_round_trips(msg):
    assert m.decode_reply(m.encode(msg)) == msg


def test_load_report_round_trips_and_defaults():
    report = m.LoadReport(engine=2, read_q=64, seq=1, tok=40, max_rid=7, free_tokens=96)
    assert m.decode_report(m.encode(report)) == report
    pe = m.decode_report(m.encode(m.LoadReport(engine=0)))
    assert (pe.seq, pe.tok, pe.read_q, pe.free_tokens) == (0, 0, 0, None)


class Handler:
    def op_down(self, msg):
        assert isinstance(msg, m.Down)
        return m.Ack()

    def op_place(self, msg):
        raise OutOfMemory("no room")


@pytest.mark.parametrize("data", [
    msgpack.packb({"op": "down", "engine": "one"}),    # a field of the wrong type
    msgpack.packb({"op": "down"}),                     # a missing field
    msgpack.packb({"op": "teleport"}),                 # an unknown op
    msgpack.packb([1, 2]),                             # not a message
    b"\xc1",                                           # not msgpack
])
def test_malformed_request_is_refused_with_invalid_argument(data):
    msg, reply = serve(Handler(), data)
    reply = m.decode_reply(reply)
    assert msg is None and isinstance(reply, m.Error) and reply.error == "InvalidArgument"
    with pytest.raises(InvalidArgument):
        m.decode_request(data)


def test_serve_replies_with_the_handler_struct_or_the_typed_error():
    msg, reply = serve(Handler(), m.encode(m.Down(engine=1)))
    assert msg == m.Down(engine=1) and m.decode_reply(reply) == m.Ack()
    _, reply = serve(Handler(), m.encode(m.Place()))
    assert m.decode_reply(reply) == m.Error(error="OutOfMemory", message="no room")
    _, reply = serve(Handler(), m.encode(m.Poll()))  # no handler for it
    assert m.decode_reply(reply).error == "DualKVError"


def test_errors_keep_their_class():
    assert error_reply(InvalidArgument("bad")) == m.Error(error="InvalidArgument", message="bad")
    assert error_reply(KeyError("k")).error == "DualKVError"


def test_client_raises_the_error_class_of_the_reply(tmp_path):
    context = zmq.Context.instance()
    endpoint = f"ipc://{tmp_path}/rep.sock"
    rep = context.socket(zmq.REP)
    rep.bind(endpoint)
    client = Client(context, endpoint, is_alive=lambda: True)
    try:
        client.send(m.Place())
        rep.send(serve(Handler(), rep.recv())[1])
        with pytest.raises(OutOfMemory, match="place: no room"):
            client.recv(5.0)
        client.send(m.Down(engine=3))
        rep.send(serve(Handler(), rep.recv())[1])
        assert client.recv(5.0) == m.Ack()
    finally:
        client.close()
        rep.close(0)


def test_live_but_silent_engine_times_out_at_the_deadline(tmp_path):
    from dualkv.errors import TimedOut

    client = Client(zmq.Context.instance(), f"ipc://{tmp_path}/silent.sock", is_alive=lambda: True)
    start = time.monotonic()
    with pytest.raises(TimedOut):
        client.call(m.Hello(), timeout_s=0.6)
    assert 0.5 < time.monotonic() - start < 2.0
    client.close()
