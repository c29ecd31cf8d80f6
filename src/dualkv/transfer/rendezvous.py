"""Rendezvous: two agents swap what they need to reach each other (worker address, region
bases, sizes, packed rkeys; opaque bytes) over a small ZeroMQ exchange, guarded by a cluster
token. Each message carries an HMAC-SHA256 of its body under the token, so a peer without the
token is refused and logged, and no endpoint is created for it; the server proves it holds
the token too before the client connects.

    server = RendezvousServer(agent, token, "tcp://10.0.0.1:5555")   # on the serving engine
    peer = rendezvous(agent, server.address, token, timeout=5.0)     # Peer(id, uid, regions)
    server.peers  # {uid: Peer} of the agents that joined
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass

import msgpack
import zmq

from dualkv.errors import InvalidArgument, PeerDisconnected, TimedOut
from dualkv.transfer.agent import Region

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """A joined agent: `id` is the local endpoint handle for put/get, `regions` its memory."""

    id: int
    uid: int
    regions: tuple[Region, ...]

    def region(self, index: int = 0) -> Region:
        return self.regions[index]


def _connect(agent, info: dict) -> Peer:
    peer_id = agent.connect(info)
    return Peer(peer_id, info["uid"], tuple(Region(**r) for r in info["regions"]))


def _seal(token: bytes, info: dict) -> bytes:
    body = msgpack.packb(info, use_bin_type=True)
    return msgpack.packb({"body": body, "mac": hmac.new(token, body, hashlib.sha256).digest()})


def _open(token: bytes, message: bytes) -> dict | None:
    """The peer's info if the message is well formed and its MAC matches, else None."""
    try:
        outer = msgpack.unpackb(message, raw=False)
        body, mac = outer["body"], outer["mac"]
        if not hmac.compare_digest(hmac.new(token, body, hashlib.sha256).digest(), mac):
            return None
        info = msgpack.unpackb(body, raw=False)
        if not {"uid", "address", "regions"} <= set(info):
            return None
        return info
    except (ValueError, KeyError, TypeError):
        return None


def _as_token(token) -> bytes:
    if isinstance(token, str):
        token = token.encode()
    if not isinstance(token, bytes) or not token:
        raise InvalidArgument("the cluster token must be non-empty bytes or str")
    return token


class RendezvousServer:
    """Answers join requests for one agent on a background thread until close()."""

    def __init__(self, agent, token, bind: str = "tcp://127.0.0.1:*"):
        self.agent = agent
        self._token = _as_token(token)
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
        info = _open(self._token, message)
        if info is None:
            self.num_refused += 1
            log.warning("rendezvous %s: refused a join with a bad cluster token", self.address)
            return msgpack.packb({"error": "refused"})
        try:
            self.peers[info["uid"]] = _connect(self.agent, info)
        except Exception as exc:  # noqa: BLE001 - reported to the joining side, server goes on
            log.warning("rendezvous %s: cannot connect back to %x: %s", self.address,
                        info["uid"], exc)
            return msgpack.packb({"error": f"connect failed: {exc}"})
        return _seal(self._token, self.agent.local_info())

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rendezvous(agent, address: str, token, timeout: float = 10.0) -> Peer:
    """Joins the agent serving at `address` and returns it as a Peer.
    Raises PeerDisconnected if refused (wrong token) and TimedOut if nobody answers."""
    token = _as_token(token)
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        socket.connect(address)
        socket.send(_seal(token, agent.local_info()))
        reply = socket.recv()
    except zmq.Again as exc:
        raise TimedOut(f"no rendezvous answer from {address} within {timeout}s") from exc
    finally:
        socket.close()
    info = _open(token, reply)
    if info is None:
        refusal = msgpack.unpackb(reply, raw=False)
        reason = refusal.get("error", "bad token") if isinstance(refusal, dict) else "bad reply"
        log.warning("rendezvous with %s refused: %s", address, reason)
        raise PeerDisconnected(f"rendezvous with {address} refused: {reason}")
    return _connect(agent, info)
