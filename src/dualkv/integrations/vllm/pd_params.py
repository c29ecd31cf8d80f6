"""The P/D handshake: what a prefill instance hands back in `kv_transfer_params`, what the router
forwards to a decode instance, and the notices the two workers exchange.

The router sends the prompt to the prefill instance with `{"do_remote_decode": true}` (and
max_tokens 1). Its request_finished answers with `PullParams.to_dict()` (`do_remote_prefill`
true), which the router passes, unchanged, to the decode instance with the same prompt. Plain
JSON types: vLLM returns them in the HTTP response.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, fields

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorHandshakeMetadata

# Notice layer a decode worker sends the producer once it holds the request's whole KV: the
# producer frees the pages. (Data notices use layers 0..num_layers-1.)
PULLED = 1 << 30


def notice_id(engine_id: str, request_id: str) -> int:
    """The agents' int64 request id of one producer request, the same on both sides."""
    digest = hashlib.blake2b(f"{engine_id}/{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class ProducerHandshake(KVConnectorHandshakeMetadata):
    """What a producer's worker tells its scheduler side (vLLM's handshake metadata channel)."""
    rendezvous: str   # "tcp://host:port" of the worker's token-guarded rendezvous server
    namespace: str    # model and KV layout (config.namespace_parts): the pages' byte format


@dataclass(frozen=True)
class PullParams:
    """Where a prefilled request's KV lies on the producer, for as long as it holds it."""
    remote_engine_id: str
    remote_request_id: str
    remote_block_ids: tuple[int, ...]  # producer's vLLM block ids, in prompt order
    remote_num_tokens: int             # tokens whose KV those blocks hold (the prompt)
    remote_rendezvous: str
    remote_namespace: str              # a decode instance with another namespace computes instead
    remote_expires_at: float           # unix time: the producer frees the pages then if not pulled

    def to_dict(self) -> dict:
        params = asdict(self)
        params["remote_block_ids"] = list(self.remote_block_ids)
        return {"do_remote_prefill": True, "do_remote_decode": False, **params}

    @classmethod
    def from_dict(cls, params: dict) -> PullParams | None:
        """None when fields are missing or malformed (the request is then computed locally)."""
        try:
            values = {f.name: params[f.name] for f in fields(cls)}
            values["remote_block_ids"] = tuple(int(b) for b in values["remote_block_ids"])
            values["remote_num_tokens"] = int(values["remote_num_tokens"])
            values["remote_expires_at"] = float(values["remote_expires_at"])
            return cls(**values)
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def notice_id(self) -> int:
        return notice_id(self.remote_engine_id, self.remote_request_id)

    def seconds_left(self) -> float:
        return self.remote_expires_at - time.time()


def wants_remote_decode(request) -> bool:
    params = request.kv_transfer_params
    return bool(params and params.get("do_remote_decode"))


def wants_remote_prefill(request) -> bool:
    params = request.kv_transfer_params
    return bool(params and params.get("do_remote_prefill"))
