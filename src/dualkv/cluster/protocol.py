"""Control plane of the local cluster: typed messages (messages.py) over ZeroMQ, every wait
with a deadline.

A request is a `messages.Request` Struct; its handler `op_<op>(msg)` returns the reply
Struct. A failed request — a malformed message included — replies `Error(error=<exception
class name>, message=...)`, which `Client.call` raises again as the same dualkv error class.
Bulk data never travels here: KV moves through the transfer engine and the store.
"""
from __future__ import annotations

import time

import zmq

from dualkv import errors
from dualkv.cluster.messages import (Error, Op, Reply, Request, decode_reply, decode_request,
                                     encode, op_name)

POLL_SLICE_S = 0.25  # how often a waiting client checks that its engine process lives

ERRORS = {name: getattr(errors, name) for name in
          ("InvalidArgument", "OutOfMemory", "NotFound", "PeerDisconnected", "TimedOut",
           "StorageError", "Unavailable")}


def error_reply(exc: BaseException) -> Error:
    name = type(exc).__name__
    return Error(error=name if name in ERRORS else "DualKVError", message=str(exc))


def serve(handler, data: bytes) -> tuple[Request | None, bytes]:
    """The request in `data` (None if malformed) and the encoded reply: handler.op_<op>(msg),
    or the failure, typed, for the caller to raise again."""
    try:
        msg = decode_request(data)
    except errors.InvalidArgument as exc:
        return None, encode(error_reply(exc))
    try:
        return msg, encode(getattr(handler, f"op_{op_name(msg)}")(msg))
    except Exception as exc:  # every failure goes back to the caller
        return msg, encode(error_reply(exc))


class Client:
    """A REQ socket to one engine process."""

    def __init__(self, context: zmq.Context, endpoint: str, is_alive=None):
        """is_alive(): False once the engine process is gone, so a wait ends at once."""
        self.endpoint, self.is_alive = endpoint, is_alive
        self.socket = context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def call(self, msg: Op, timeout_s: float = 60.0) -> Reply:
        self.send(msg)
        return self.recv(timeout_s)

    def send(self, msg: Op) -> None:
        """Starts a request; `recv` finishes it (lets several engines work at once)."""
        self._op = op_name(msg)
        self.socket.send(encode(msg))

    def recv(self, timeout_s: float = 60.0) -> Reply:
        deadline = time.monotonic() + timeout_s
        while not self.socket.poll(int(1000 * max(0.0, min(POLL_SLICE_S,
                                                           deadline - time.monotonic())))):
            if self.is_alive is not None and not self.is_alive():
                raise errors.PeerDisconnected(f"{self.endpoint} died during {self._op!r}")
            if time.monotonic() >= deadline:
                raise errors.TimedOut(f"{self.endpoint} did not answer {self._op!r} in {timeout_s} s")
        reply = decode_reply(self.socket.recv())
        if isinstance(reply, Error):
            cls = ERRORS.get(reply.error, errors.DualKVError)
            raise cls(f"{self.endpoint} {self._op}: {reply.message}")
        return reply

    def close(self) -> None:
        self.socket.close(0)
