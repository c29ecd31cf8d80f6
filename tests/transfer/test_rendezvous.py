"""The rendezvous against a party without the cluster token: a relay that sees every byte of a
join, replays of captured joins, a server that does not hold the token, stale sessions."""
import struct
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from dualkv import errors
from dualkv._native import C

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")

from dualkv.transfer.rendezvous import RendezvousServer, rendezvous  # noqa: E402
from dualkv.transfer import Agent, TransferConfig  # noqa: E402

TOKEN = "cluster-secret"
WAIT_S = 10


class Relay:
    """Sits between a joiner and a server without the token: forwards each request (after
    `delays[i]` seconds for the i-th) and keeps a copy of every byte both ways."""

    def __init__(self, upstream: str, delays: dict[int, float] | None = None):
        self.front = zmq.Context.instance().socket(zmq.REP)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.bind("tcp://127.0.0.1:*")
        self.address = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.upstream, self.delays = upstream, delays or {}
        self.requests: list[bytes] = []
        self.replies: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        back = zmq.Context.instance().socket(zmq.REQ)
        back.setsockopt(zmq.LINGER, 0)
        back.connect(self.upstream)
        while not self._stop.is_set():
            if not self.front.poll(50):
                continue
            request = self.front.recv()
            time.sleep(self.delays.get(len(self.requests), 0))
            self.requests.append(request)
            back.send(request)
            reply = back.recv() if back.poll(WAIT_S * 1000) else b"relay: no answer"
            self.replies.append(reply)
            self.front.send(reply)
        back.close()
        self.front.close()

    def close(self):
        self._stop.set()
        self._thread.join(WAIT_S)


def send_each(address: str, messages: list[bytes]) -> list[bytes]:
    """Sends `messages` in order on one fresh connection; the answers."""
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    replies = []
    try:
        for message in messages:
            socket.send(message)
            assert socket.poll(WAIT_S * 1000), "the server did not answer in time"
            replies.append(socket.recv())
    finally:
        socket.close()
    return replies


def secrets(agent) -> list[bytes]:
    """Bytes a party without the token must never see: worker address, uid, rkeys."""
    info = agent.local_info()
    found = [info["address"], struct.pack(">Q", info["uid"])]
    found += [r["rkey"] for r in info["regions"]]
    assert all(len(s) >= 8 for s in found)
    return found


def leaked(agents, messages) -> list[str]:
    return [f"{n} of agent {a.uid:x}" for a in agents for n, s in enumerate(secrets(a))
            for m in messages if s in m]


@pytest.fixture
def agents():
    server_agent, joiner = Agent(TransferConfig()), Agent(TransferConfig())
    server_agent.register(np.zeros(1 << 16, dtype=np.uint8))
    joiner.register(np.zeros(1 << 16, dtype=np.uint8))
    yield server_agent, joiner
    joiner.close()
    server_agent.close()


@pytest.fixture
def joined(agents):
    """A join through a relay that kept every byte; yields (server, relay, agents)."""
    server_agent, joiner = agents
    with RendezvousServer(server_agent, TOKEN) as server:
        relay = Relay(server.address)
        try:
            peer = rendezvous(joiner, relay.address, TOKEN, timeout=WAIT_S)
            assert peer.uid == server_agent.uid and list(server.peers) == [joiner.uid]
            yield server, relay, agents
        finally:
            relay.close()


def test_a_relay_without_the_token_reads_no_address_rkey_or_uid(joined):
    server, relay, agents = joined
    assert relay.requests and relay.replies
    assert leaked(agents, relay.requests + relay.replies) == []


def test_a_replayed_join_is_refused_counted_and_answered_with_nothing_secret(joined):
    server, relay, (server_agent, joiner) = joined
    num_peers = len(server_agent.peers())
    replies = send_each(server.address, relay.requests)  # the whole join again, in order
    replies += send_each(server.address, relay.requests[-1:])  # its last message alone
    assert server.num_refused == 2
    assert leaked([server_agent, joiner], replies) == []
    assert list(server.peers) == [joiner.uid] and len(server_agent.peers()) == num_peers


def test_a_join_moved_into_another_session_is_refused(joined):
    server, relay, (server_agent, joiner) = joined
    hello, join = (msgpack.unpackb(m) for m in relay.requests)
    fresh = msgpack.packb({**hello, "client_nonce": bytes(32)})
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(server.address)
    try:
        socket.send(fresh)
        assert socket.poll(WAIT_S * 1000)
        challenge = msgpack.unpackb(socket.recv())
        socket.send(msgpack.packb({**join, "session_id": challenge["session_id"]}))
        assert socket.poll(WAIT_S * 1000)
        assert msgpack.unpackb(socket.recv())["kind"] == "refused"
    finally:
        socket.close()
    assert server.num_refused == 1


def test_a_join_after_its_session_expired_is_refused(agents):
    server_agent, joiner = agents
    with RendezvousServer(server_agent, TOKEN, session_ttl_s=0.2) as server:
        relay = Relay(server.address, delays={1: 0.5})  # the Join arrives after 0.5 s
        try:
            with pytest.raises(errors.PeerDisconnected, match="refused"):
                rendezvous(joiner, relay.address, TOKEN, timeout=WAIT_S)
        finally:
            relay.close()
        assert server.num_refused == 1 and server.peers == {}
        assert server_agent.peers() == [] and joiner.peers() == []


class SlowToDescribe:
    """An agent whose local_info() takes `delay_s`, as one does while its lock is held by a
    long transfer; everything else is the agent's."""

    def __init__(self, agent, delay_s: float):
        self._agent, self._delay_s = agent, delay_s

    def local_info(self):
        time.sleep(self._delay_s)  # stands in for the wait on the agent's lock
        return self._agent.local_info()

    def __getattr__(self, name):
        return getattr(self._agent, name)


def test_a_joiner_slow_to_describe_itself_still_answers_its_challenge_in_time(agents):
    server_agent, joiner = agents
    with RendezvousServer(server_agent, TOKEN, session_ttl_s=0.3) as server:
        peer = rendezvous(SlowToDescribe(joiner, 0.6), server.address, TOKEN, timeout=WAIT_S)
        assert server.num_refused == 0 and peer.id >= 0
        assert len(server.peers) == 1


class TokenlessServer:
    """Answers like a rendezvous server but holds another token: it seals its Welcome with
    keys of its own token, so its proof cannot match. Keeps every byte it received."""

    def __init__(self, agent):
        self.agent = agent
        self.socket = zmq.Context.instance().socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        nonce = session_id = None
        for _ in range(2):
            if not self.socket.poll(WAIT_S * 1000):
                break
            message = self.socket.recv()
            self.received.append(message)
            request = msgpack.unpackb(message)
            if isinstance(request, dict) and request.get("kind") == "hello":
                nonce, session_id = request["client_nonce"], bytes(16)
                reply = {"kind": "challenge", "session_id": session_id, "server_nonce": bytes(32)}
            elif isinstance(request, dict) and request.get("kind") == "join":
                from dualkv.transfer.session import SessionKeys
                keys = SessionKeys.derive(b"another-token", session_id, nonce, bytes(32))
                info = msgpack.packb(self.agent.local_info(), use_bin_type=True)
                box, tag = keys.seal("s2c", info, request["box"])
                reply = {"kind": "welcome", "box": box, "tag": tag}
            else:  # a join of the old protocol: answered the same way with its own info
                reply = {"body": msgpack.packb(self.agent.local_info()), "mac": bytes(32)}
            self.socket.send(msgpack.packb(reply))
        self.socket.close()


def test_a_server_without_the_token_is_detected_and_learns_nothing(agents):
    server_agent, joiner = agents
    fake = TokenlessServer(server_agent)
    with pytest.raises(errors.PeerDisconnected, match="cluster token|refused"):
        rendezvous(joiner, fake.address, TOKEN, timeout=WAIT_S)
    fake._thread.join(WAIT_S)
    assert joiner.peers() == []
    assert fake.received and leaked([joiner], fake.received) == []


def test_every_wait_of_a_join_ends_at_its_deadline(agents):
    server_agent, joiner = agents
    silent = zmq.Context.instance().socket(zmq.REP)
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind("tcp://127.0.0.1:*")
    try:
        start = time.monotonic()
        with pytest.raises(errors.TimedOut):
            rendezvous(joiner, silent.getsockopt_string(zmq.LAST_ENDPOINT), TOKEN, timeout=0.3)
        assert time.monotonic() - start < 2
    finally:
        silent.close()


def test_session_boxes_open_only_with_their_keys():
    from dualkv.transfer.session import SessionKeys
    keys = SessionKeys.derive(b"t", b"s" * 16, b"c" * 32, b"n" * 32)
    box, tag = keys.seal("c2s", b"worker address", b"bound")
    assert b"worker address" not in box
    assert keys.open("c2s", box, tag, b"bound") == b"worker address"
    assert keys.open("s2c", box, tag, b"bound") is None  # other direction
    assert keys.open("c2s", box, tag, b"other") is None  # other transcript
    assert keys.open("c2s", bytes([box[0] ^ 1]) + box[1:], tag, b"bound") is None
    other = SessionKeys.derive(b"u", b"s" * 16, b"c" * 32, b"n" * 32)
    assert other.open("c2s", box, tag, b"bound") is None  # another token
