"""Control plane of the local cluster: msgpack dicts over ZeroMQ, every wait with a deadline.

A message is a dict with an "op" (request) or "ok" (reply) field; a failed request replies
{"ok": False, "error": <exception class name>, "message": ...}, which `Client.call` raises
again as the same dualkv error class. Bulk data never travels here: KV moves through the
transfer engine and the store.
"""
from __future__ import annotations

import time

import msgpack
import zmq

from dualkv import errors

POLL_SLICE_S = 0.25  # how often a waiting client checks that its engine process lives

ERRORS = {name: getattr(errors, name) for name in
          ("InvalidArgument", "OutOfMemory", "NotFound", "PeerDisconnected", "TimedOut",
           "StorageError", "Unavailable")}


def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False)


def error_reply(exc: BaseException) -> dict:
    name = type(exc).__name__
    return {"ok": False, "error": name if name in ERRORS else "DualKVError", "message": str(exc)}


def serve(handler, msg: dict) -> dict:
    """The reply to a request: handler.op_<op>(msg) merged into {"ok": True}, or the failure,
    typed, for the caller to raise again."""
    try:
        return {"ok": True, **getattr(handler, f"op_{msg['op']}")(msg)}
    except Exception as exc:  # every failure goes back to the caller
        return error_reply(exc)


class Client:
    """A REQ socket to one engine process."""

    def __init__(self, context: zmq.Context, endpoint: str, is_alive=None):
        """is_alive(): False once the engine process is gone, so a wait ends at once."""
        self.endpoint, self.is_alive = endpoint, is_alive
        self.socket = context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def call(self, op: str, timeout_s: float = 60.0, **fields) -> dict:
        self.send(op, **fields)
        return self.recv(timeout_s)

    def send(self, op: str, **fields) -> None:
        """Starts a request; `recv` finishes it (lets several engines work at once)."""
        self._op = op
        self.socket.send(pack({"op": op, **fields}))

    def recv(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while not self.socket.poll(int(1000 * max(0.0, min(POLL_SLICE_S,
                                                           deadline - time.monotonic())))):
            if self.is_alive is not None and not self.is_alive():
                raise errors.PeerDisconnected(f"{self.endpoint} died during {self._op!r}")
            if time.monotonic() >= deadline:
                raise errors.TimedOut(f"{self.endpoint} did not answer {self._op!r} in {timeout_s} s")
        reply = unpack(self.socket.recv())
        if not reply.get("ok"):
            cls = ERRORS.get(reply.get("error"), errors.DualKVError)
            raise cls(f"{self.endpoint} {self._op}: {reply.get('message')}")
        return reply

    def close(self) -> None:
        self.socket.close(0)
