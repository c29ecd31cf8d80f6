"""Every control message of the local cluster, typed: msgspec Structs over msgpack.

A request is one Struct of the `Request` union, tagged by its "op"; its reply one Struct of
the `Reply` union, tagged by "reply" (`Error` for a failure, raised again by the client as the
same dualkv error class). Engines push `LoadReport`s to the scheduler process. `encode` and
`decode_*` are the one codec: decoding validates every field's type, so a malformed message
is an InvalidArgument, never a KeyError in a handler.
"""
from __future__ import annotations

from typing import Any, Union

import msgspec

from dualkv.errors import InvalidArgument


class Message(msgspec.Struct, kw_only=True):
    pass


class Op(Message, tag_field="op"):
    pass


class ReplyBase(Message, tag_field="reply"):
    pass


# -- per-request items ----------------------------------------------------------------------
class SubmitRequest(Message, array_like=True):
    """A turn submitted to the scheduler (`dualkv.sched.Request`)."""
    rid: int
    prompt_tokens: int
    hit_tokens: int
    gen_tokens: int


class Placement(Message, array_like=True):
    """Where the scheduler placed a request: its PE, its DE (engine ids) and read side."""
    rid: int
    pe: int
    de: int
    read_side: str


class PrefillRequest(Message):
    """One chunk of a PE batch (a `sched.Chunk`): tokens [cached, end) of the request's prompt,
    its hit (read on `read_side`, by its first chunk) and its DE buffer's slots. A chunk that
    is not the last leaves the rest of the request to the PE's next batch."""
    rid: int
    prompt: list[int]
    cached: int      # tokens before this chunk: the hit, then the earlier chunks' end
    end: int         # this chunk computes the prompt up to here
    is_last: bool    # end == len(prompt): the request's prefill is done with it
    read_side: str
    hit_keys: bytes
    num_hit_blocks: int
    ready_at: float
    de_peer: int
    de_region: int
    slot_offsets: list[int]
    recv_offset: int = 0


class PrefillResult(Message):
    first_token: int | None  # None for a chunk that is not the last
    num_cached_blocks: int   # hit blocks the first chunk found loadable
    done_at: float


class AdmitRequest(Message):
    """A request whose prompt KV the PE has put into its DE buffer."""
    rid: int
    prompt: list[int]
    first_token: int
    max_new_tokens: int
    num_cached_blocks: int
    prior_key: bytes
    pe_peer: int


class DecodeResult(Message):
    rid: int
    generated: list[int]
    num_written_blocks: int
    admitted_at: float
    second_at: float | None
    done_at: float


class LoadReport(Message):
    """An engine's load, pushed to the scheduler process after every change."""
    engine: int
    read_q: int = 0      # the node's read queue, tokens
    seq: int = 0         # unfinished requests
    tok: int = 0         # their tokens
    max_rid: int = 0     # the newest request id the engine had seen
    free_tokens: int | None = None  # a DE's free buffer (None: unbounded)


# -- requests: driver -> scheduler process --------------------------------------------------
class Submit(Op, tag="submit"):
    requests: list[SubmitRequest]


class Place(Op, tag="place"):
    pass


class Down(Op, tag="down"):
    engine: int


class Up(Op, tag="up"):
    engine: int


class Stop(Op, tag="stop"):
    pass


# -- requests: driver -> engine process ------------------------------------------------------
class Hello(Op, tag="hello"):
    pass


class Connect(Op, tag="connect"):
    info: dict[str, Any]  # the peer agent's local_info()


class Open(Op, tag="open"):
    rid: int
    num_tokens: int
    max_new_tokens: int
    hit_keys: bytes
    read_side: str
    pe_peer: int
    pe_recv_region: int
    pe_recv_offset: int = 0


class Admit(Op, tag="admit"):
    requests: list[AdmitRequest]


class Poll(Op, tag="poll"):
    pass


class Drop(Op, tag="drop"):
    rids: list[int] = []  # empty: every opened request


class Prefill(Op, tag="prefill"):
    mode: str  # "dualpath" (layerwise) or "basic"
    requests: list[PrefillRequest]  # the chunks of one batch of the PE's PrefillBatcher


class Stats(Op, tag="stats"):
    pass


# -- replies ---------------------------------------------------------------------------------
class Ack(ReplyBase, tag="ack"):
    pass


class Error(ReplyBase, tag="error"):
    error: str  # a dualkv.errors class name
    message: str


class Placed(ReplyBase, tag="placed"):
    placed: list[Placement]
    num_waiting: int
    no_pe: bool


class HelloReply(ReplyBase, tag="hello"):
    info: dict[str, Any]
    pool_region: int
    recv_region: int


class Connected(ReplyBase, tag="connected"):
    peer: int


class Opened(ReplyBase, tag="opened"):
    slot_offsets: list[int]
    num_hit_blocks: int
    ready_at: float


class Admitted(ReplyBase, tag="admitted"):
    num_running: int


class Polled(ReplyBase, tag="polled"):
    results: list[DecodeResult]
    progress: list[tuple[int, int]]  # (rid, tokens generated) of every running request
    free_tokens: int


class Dropped(ReplyBase, tag="dropped"):
    num_dropped: int


class Prefilled(ReplyBase, tag="prefilled"):
    results: list[PrefillResult]


class StatsReply(ReplyBase, tag="stats"):
    snic_bytes: int


Request = Union[Submit, Place, Down, Up, Stop, Hello, Connect, Open, Admit, Poll, Drop,
                Prefill, Stats]
Reply = Union[Ack, Error, Placed, HelloReply, Connected, Opened, Admitted, Polled, Dropped,
              Prefilled, StatsReply]

_encoder = msgspec.msgpack.Encoder()
_decoders = {name: msgspec.msgpack.Decoder(kind) for name, kind in
             (("request", Request), ("reply", Reply), ("load report", LoadReport))}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def _decode(name: str, data: bytes):
    try:
        return _decoders[name].decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidArgument(f"malformed {name}: {exc}") from None


def decode_request(data: bytes) -> Request:
    return _decode("request", data)


def decode_reply(data: bytes) -> Reply:
    return _decode("reply", data)


def decode_report(data: bytes) -> LoadReport:
    return _decode("load report", data)


def op_name(message: Op) -> str:
    """The message's "op" tag ("prefill", "poll", ...)."""
    return type(message).__struct_config__.tag
