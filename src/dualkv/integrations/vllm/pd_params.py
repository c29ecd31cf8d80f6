"""The P/D handshake: what an instance hands back in `kv_transfer_params`, what the router
forwards to the other one, and the notices the two workers exchange. Plain JSON types: vLLM
returns them in the HTTP response.

Basic read: the router sends the prompt to the prefill instance with `{"do_remote_decode":
true}` (and max_tokens 1). Its request_finished answers with `PullParams.to_dict()`
(`do_remote_prefill` true), which the router passes, unchanged, to the decode instance with the
same prompt.

DualPath read (the decode instance reads the store), three hops:
1. hit request to the decode instance: `hit_prompt(prompt, num_hit_tokens)` (the hit prefix and
   one more token) with `{"dualpath_read": true}`, max_tokens 1. It loads the hit from the store
   into its pages, holds them and answers `PullParams` naming them (`dualpath_read` true).
2. the prompt to the prefill instance with `prefill_params(answer)`: it fetches the hit's pages
   from the decode instance layer by layer during its forward, computes the rest, writes the
   new Full Blocks to the store, holds its pages and answers `PullParams` as in Basic.
3. the prompt to the decode instance with that answer: its prefix cache holds the hit already,
   so it pulls only the new tokens' pages.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorHandshakeMetadata

from dualkv.router.protocol import hit_prompt, prefill_params  # noqa: F401 - the hops' shapes

# Notice layer a decode worker sends the producer once it holds the request's whole KV: the
# producer frees the pages. (Data notices use layers 0..num_layers-1.)
PULLED = 1 << 30


def notice_id(engine_id: str, request_id: str) -> int:
    """The agents' int64 request id of one producer request, the same on both sides."""
    digest = hashlib.blake2b(f"{engine_id}/{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def tokens_digest(token_ids, start: int, stop: int) -> str:
    """Names token_ids[start:stop]: the tokens of a pulled range that no block key names (the
    partial last block, or all of them when there is no key). A receiver whose prompt differs
    there computes instead of pulling KV computed over other tokens. Hashing only those keeps
    it O(block size) on the scheduler's path, however long the prompt."""
    ids = np.asarray(token_ids[start:stop], np.int64)
    return hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()


def unkeyed_start(num_tokens: int, block_size: int, prefix_key: str) -> int:
    """Where the tokens a prefix key does not name begin: after its whole blocks, or at 0."""
    return num_tokens // block_size * block_size if prefix_key else 0


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
    # hex key of the last full block those pages hold (vLLM's chained hash: it names the whole
    # prefix); a receiver whose prompt has another key there computes instead. "" = unchecked
    remote_prefix_key: str = ""
    # digest of the pulled tokens the prefix key does not name (tokens_digest from
    # unkeyed_start to remote_num_tokens): a last, partial block. "" = unchecked
    remote_tokens_digest: str = ""

    def to_dict(self, **extra) -> dict:
        params = asdict(self)
        params["remote_block_ids"] = list(self.remote_block_ids)
        return {"do_remote_prefill": True, "do_remote_decode": False, **params, **extra}

    @classmethod
    def from_dict(cls, params: dict) -> PullParams | None:
        """None when fields are missing or malformed (the request is then computed locally)."""
        try:
            values = {f.name: params[f.name] for f in fields(cls)
                      if f.name in params or f.default is MISSING}
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


def wants_dualpath_read(request) -> bool:
    """A hit request (DualPath read, hop 1): load the hit from the store, hold it for a prefill
    instance."""
    params = request.kv_transfer_params
    return bool(params and params.get("dualpath_read") and not params.get("do_remote_prefill")
                and not params.get("do_remote_decode"))
