"""Rendezvous: two agents swap what they need to reach each other (worker address, region
bases, sizes, packed rkeys) over a small ZeroMQ exchange, guarded by a cluster token.

    server = RendezvousServer(agent, token, "tcp://10.0.0.1:5555")   # on the serving engine
    peer = rendezvous(agent, server.address, token, timeout=5.0)     # Peer(id, uid, regions)
    server.peers  # {uid: Peer} of the agents that joined; server.num_refused

A join is a challenge-response in two round trips (see `session.py` for the keys):

    joiner -> server  Hello(client_nonce)
    server -> joiner  Challenge(session_id, server_nonce)        single use, expires
    joiner -> server  Join(session_id, box(joiner info), tag)    proves the token
    server -> joiner  Welcome(box(server info), tag)             proves the token

Infos travel only inside boxes sealed under the session's keys, so a party without the token
reads no address or rkey, from either side. The server refuses (and counts in `num_refused`)
a Join of an unknown, used or expired session (a replay), one whose tag does not match (wrong
token, altered bytes, another session's box) and anything malformed; it creates an endpoint
only after the joiner's proof. The joiner connects only after the server's proof.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import msgpack
import msgspec
import zmq

from dualkv.errors import InvalidArgument, PeerDisconnected, TimedOut
from dualkv.transfer.agent import Region
from dualkv.transfer.session import NONCE_BYTES, SessionKeys, new_nonce

log = logging.getLogger(__name__)

VERSION = 2
SESSION_ID_BYTES = 16
# A Challenge not answered by then is refused. Replays are stopped by single-use sessions and
# fresh nonces, not by this bound; it only frees challenges nobody answers, so it is generous:
# a loaded decode instance (forward on every core, paced transfers) answered one after 10 s.
SESSION_TTL_S = 60.0
MAX_PENDING = 64       # open challenges kept; the oldest goes first


class _Message(msgspec.Struct, tag_field="kind", frozen=True):
    pass


class Hello(_Message, tag="hello"):
    version: int
    client_nonce: bytes


class Challenge(_Message, tag="challenge"):
    session_id: bytes
    server_nonce: bytes


class Join(_Message, tag="join"):
    session_id: bytes
    box: bytes
    tag: bytes


class Welcome(_Message, tag="welcome"):
    box: bytes
    tag: bytes


class Refused(_Message, tag="refused"):
    reason: str


_encode = msgspec.msgpack.encode
_decoder = msgspec.msgpack.Decoder(Hello | Challenge | Join | Welcome | Refused)


def _decode(message: bytes) -> _Message | None:
    try:
        return _decoder.decode(message)
    except msgspec.DecodeError:  # ValidationError is one
        return None


@dataclass(frozen=True)
class Peer:
    """A joined agent: `id` is the local endpoint handle for put/get, `regions` its memory."""

    id: int
    uid: int
    regions: tuple[Region, ...]

    def region(self, index: int = 0) -> Region:
        return self.regions[index]


def _pack_info(agent) -> bytes:
    return msgpack.packb(agent.local_info(), use_bin_type=True)


def _unpack_info(plaintext: bytes) -> dict | None:
    """The peer's info if it has the shape local_info() gives, else None."""
    try:
        info = msgpack.unpackb(plaintext, raw=False)
        regions = [Region(**r) for r in info["regions"]]
        ok = type(info["uid"]) is int and isinstance(info["address"], bytes) and all(
            type(r.id) is int and type(r.base) is int and type(r.size) is int
            and isinstance(r.rkey, bytes) for r in regions)
        return info if ok else None
    except (ValueError, KeyError, TypeError, msgpack.ExtraData):
        return None


def _connect(agent, info: dict) -> Peer:
    peer_id = agent.connect(info)
    return Peer(peer_id, info["uid"], tuple(Region(**r) for r in info["regions"]))


def _as_token(token) -> bytes:
    if isinstance(token, str):
        token = token.encode()
    if not isinstance(token, bytes) or not token:
        raise InvalidArgument("the cluster token must be non-empty bytes or str")
    return token


class RendezvousServer:
    """Answers joins for one agent on a background thread until close(). `session_ttl_s`:
    how long a Challenge stays answerable."""

    def __init__(self, agent, token, bind: str = "tcp://127.0.0.1:*",
                 session_ttl_s: float = SESSION_TTL_S):
        if not session_ttl_s > 0:
            raise InvalidArgument("session_ttl_s must be > 0")
        self.agent = agent
        self._token = _as_token(token)
        self._session_ttl_s = session_ttl_s
        self._pending: dict[bytes, tuple[SessionKeys, float]] = {}  # session id -> keys, end
        self._socket = zmq.Context.instance().socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(bind)
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peers: dict[int, Peer] = {}
        self.num_refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dualkv-rendezvous", daemon=True)
        self._thread.start()

    def _serve(self):
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            self._socket.send(self._answer(self._socket.recv()))
        self._socket.close()

    def _answer(self, message: bytes) -> bytes:
        msg = _decode(message)
        if isinstance(msg, Hello):
            return self._challenge(msg)
        if isinstance(msg, Join):
            return self._join(msg)
        return self._refuse("a malformed or unexpected message")

    def _refuse(self, why: str) -> bytes:
        self.num_refused += 1
        log.warning("rendezvous %s: refused %s", self.address, why)
        return _encode(Refused("refused"))  # the reason stays here: no oracle for the sender

    def _challenge(self, hello: Hello) -> bytes:
        if hello.version != VERSION or len(hello.client_nonce) != NONCE_BYTES:
            return self._refuse(f"a Hello of version {hello.version} or with a bad nonce")
        now = time.monotonic()
        self._pending = {s: p for s, p in self._pending.items() if p[1] > now}
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        session_id, server_nonce = os.urandom(SESSION_ID_BYTES), new_nonce()
        keys = SessionKeys.derive(self._token, session_id, hello.client_nonce, server_nonce)
        self._pending[session_id] = (keys, now + self._session_ttl_s)
        return _encode(Challenge(session_id, server_nonce))

    def _join(self, join: Join) -> bytes:
        keys, end = self._pending.pop(join.session_id, (None, 0.0))  # one try per session
        if keys is None:
            return self._refuse("a join of an unknown or already used session (a replay?)")
        if time.monotonic() > end:
            return self._refuse("a join of an expired session")
        plaintext = keys.open("c2s", join.box, join.tag)
        if plaintext is None:
            return self._refuse("a join with a bad cluster token (or altered bytes)")
        info = _unpack_info(plaintext)
        if info is None:
            return self._refuse("a join with malformed peer info")
        try:
            self.peers[info["uid"]] = _connect(self.agent, info)
        except Exception as exc:  # noqa: BLE001 - reported to the joining side, server goes on
            log.warning("rendezvous %s: cannot connect back to %x: %s", self.address,
                        info["uid"], exc)
            return _encode(Refused(f"connect failed: {exc}"))
        box, tag = keys.seal("s2c", _pack_info(self.agent), join.box)
        return _encode(Welcome(box, tag))

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rendezvous(agent, address: str, token, timeout: float = 10.0) -> Peer:
    """Joins the agent serving at `address` and returns it as a Peer. Raises
    PeerDisconnected if refused (wrong token) or if the server does not prove it holds the
    token, and TimedOut if the whole exchange does not finish within `timeout`."""
    token = _as_token(token)
    deadline = time.monotonic() + timeout
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        info = _pack_info(agent)  # before the Hello: may wait on the agent, never on the session
        client_nonce = new_nonce()
        challenge = _exchange(socket, Hello(VERSION, client_nonce), Challenge, address, deadline)
        if len(challenge.session_id) != SESSION_ID_BYTES \
                or len(challenge.server_nonce) != NONCE_BYTES:
            raise PeerDisconnected(f"rendezvous with {address}: a malformed challenge")
        keys = SessionKeys.derive(token, challenge.session_id, client_nonce,
                                  challenge.server_nonce)
        box, tag = keys.seal("c2s", info)
        welcome = _exchange(socket, Join(challenge.session_id, box, tag), Welcome, address,
                            deadline)
    finally:
        socket.close()
    plaintext = keys.open("s2c", welcome.box, welcome.tag, box)
    if plaintext is None:
        log.warning("rendezvous with %s: the server did not prove it holds the cluster token",
                    address)
        raise PeerDisconnected(f"rendezvous with {address}: the server did not prove it holds "
                               "the cluster token")
    info = _unpack_info(plaintext)
    if info is None:
        raise PeerDisconnected(f"rendezvous with {address}: malformed peer info")
    return _connect(agent, info)


def _exchange(socket, request: _Message, expect: type, address: str, deadline: float):
    """Sends `request`, returns the reply if it is an `expect`; every wait ends at deadline."""
    left_ms = lambda: max(0, int((deadline - time.monotonic()) * 1000))  # noqa: E731
    if not socket.poll(left_ms(), zmq.POLLOUT):
        raise TimedOut(f"no rendezvous answer from {address} in time")
    socket.send(_encode(request), zmq.NOBLOCK)
    if not socket.poll(left_ms(), zmq.POLLIN):
        raise TimedOut(f"no rendezvous answer from {address} in time")
    reply = _decode(socket.recv(zmq.NOBLOCK))
    if isinstance(reply, expect):
        return reply
    reason = reply.reason if isinstance(reply, Refused) else "a malformed reply"
    log.warning("rendezvous with %s refused: %s", address, reason)
    raise PeerDisconnected(f"rendezvous with {address} refused: {reason}")
