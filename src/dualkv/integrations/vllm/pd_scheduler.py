"""Scheduler side of the P/D roles: which pages an instance holds for another, and which it
pulls from another.

`HoldPlan` (both roles): a finished request whose pages another instance reads stays held, and
its `kv_transfer_params` say where the pages are, until that instance reports it read them (or
the lease ends). A producer holds a prefilled prompt (`do_remote_decode`); a consumer holds the
hit prefix it loaded from the store for a prefill instance (`dualpath_read`, docs/vllm-pd.md).

`PullPlan` (both roles): a request carrying another instance's answer (`do_remote_prefill`)
reports those tokens as computed elsewhere and the worker reads them into the pages vLLM
allocated. On a consumer (Basic read, and the new tokens of a DualPath read) the pull is
asynchronous and whole; on a producer (the hit of a DualPath read) it is synchronous and
layerwise: the forward waits for layer l's pages only.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from dualkv.integrations.vllm.keys import block_keys
from dualkv.integrations.vllm.metadata import HoldSpec, PullSpec
from dualkv.integrations.vllm.pd_params import (PullParams, notice_id, tokens_digest,
                                                unkeyed_start, wants_dualpath_read,
                                                wants_remote_decode, wants_remote_prefill)

log = logging.getLogger(__name__)


def prefix_key(request, num_blocks: int, hash_stride: int) -> str:
    """Hex key of the request's block num_blocks - 1: it names the whole prefix."""
    if num_blocks <= 0 or len(request.block_hashes) < num_blocks * hash_stride:
        return ""
    return bytes(block_keys(request.block_hashes, num_blocks - 1, num_blocks, hash_stride)[0]).hex()


class HoldPlan:
    def __init__(self, engine_id: str, block_size: int, hash_stride: int, namespace: str,
                 lease_s: float):
        self.engine_id, self.block_size, self.hash_stride = engine_id, block_size, hash_stride
        self.namespace, self.lease_s = namespace, lease_s
        self.rendezvous: str | None = None  # the worker's, from vLLM's handshake metadata
        self._holds: list[HoldSpec] = []    # told to the worker in the next step's metadata

    def set_handshake(self, metadata: dict) -> None:
        if 0 in metadata:
            self.rendezvous = metadata[0].rendezvous

    def request_finished(self, request, block_ids) -> tuple[bool, dict | None]:
        """Holds a prefilled prompt (do_remote_decode) or a loaded hit (dualpath_read)."""
        from vllm.v1.request import RequestStatus

        is_hit = wants_dualpath_read(request)
        if not (is_hit or wants_remote_decode(request)) or not block_ids:
            return False, None
        if request.status not in (RequestStatus.FINISHED_LENGTH_CAPPED,
                                  RequestStatus.FINISHED_STOPPED):
            return False, None  # aborted or failed: nothing to hand over
        if self.rendezvous is None:
            log.error("dualkv: no rendezvous address from the workers (handshake metadata "
                      "missing); %s cannot be handed to another instance", request.request_id)
            return False, None
        if is_hit:  # the whole blocks before the token this instance computed
            num_tokens = (request.num_prompt_tokens - 1) // self.block_size * self.block_size
        else:
            num_tokens = min(request.num_computed_tokens, request.num_prompt_tokens)
        num_blocks = -(-num_tokens // self.block_size)
        if num_blocks == 0:
            return False, None
        key = prefix_key(request, num_tokens // self.block_size, self.hash_stride)
        start = unkeyed_start(num_tokens, self.block_size, key)
        params = PullParams(self.engine_id, request.request_id, tuple(block_ids[:num_blocks]),
                            num_tokens, self.rendezvous, self.namespace,
                            time.time() + self.lease_s, key,
                            tokens_digest(request.prompt_token_ids, start, num_tokens))
        self._holds.append(HoldSpec(request.request_id,
                                    notice_id(self.engine_id, request.request_id)))
        return True, params.to_dict(**({"dualpath_read": True} if is_hit else {}))

    def take_holds(self) -> list[HoldSpec]:
        holds, self._holds = self._holds, []
        return holds


class PullPlan:
    def __init__(self, block_size: int, hash_stride: int, namespace: str, timeout_s: float,
                 is_async: bool):
        self.block_size, self.hash_stride = block_size, hash_stride
        self.namespace, self.timeout_s, self.is_async = namespace, timeout_s, is_async
        self._num_local: dict[str, int] = {}  # req_id -> locally cached tokens at the match
        self._pulls: list[PullSpec] = []      # async pulls, and releases (no blocks)
        self._fetches: list[PullSpec] = []    # sync layerwise pulls (is_async False)

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        """The tokens the other instance holds beyond the local prefix hit; None: not usable
        (the caller computes them, or reads the store)."""
        params = self._usable(request)
        if params is None:
            return None
        self._num_local[request.request_id] = num_computed_tokens
        # a sync load must leave vLLM a token to compute; an async one recomputes the last itself
        limit = request.num_prompt_tokens - (0 if self.is_async else 1)
        count = min(params.remote_num_tokens, limit) - num_computed_tokens
        return (count, self.is_async) if count > 0 else (0, False)

    def _usable(self, request) -> PullParams | None:
        params = PullParams.from_dict(request.kv_transfer_params)
        reason = None
        if params is None:
            reason = "malformed kv_transfer_params"
        elif params.remote_namespace != self.namespace:
            reason = f"producer namespace {params.remote_namespace!r} is not {self.namespace!r}"
        elif params.seconds_left() < self.timeout_s:
            reason = "the producer's lease ends before a pull could"
        elif params.remote_prefix_key and params.remote_prefix_key != prefix_key(
                request, params.remote_num_tokens // self.block_size, self.hash_stride):
            reason = "its prompt does not start with the tokens whose KV the parameters name"
        elif params.remote_tokens_digest and (
                len(request.prompt_token_ids) < params.remote_num_tokens or
                params.remote_tokens_digest != tokens_digest(
                    request.prompt_token_ids, unkeyed_start(
                        params.remote_num_tokens, self.block_size, params.remote_prefix_key),
                    params.remote_num_tokens)):
            reason = "its prompt's tokens differ from those whose KV the parameters name"
        if reason:
            log.warning("dualkv: %s is computed here, not pulled: %s", request.request_id, reason)
        return None if reason else params

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> int | None:
        """Plans the pull; returns the whole blocks the other instance holds, or None when the
        request was not taken (the caller computes it, or reads the store)."""
        params = PullParams.from_dict(request.kv_transfer_params)
        request.kv_transfer_params["do_remote_prefill"] = False  # one pull per request
        is_taken = request.request_id in self._num_local
        num_local = self._num_local.pop(request.request_id, 0)
        if params is None:
            return None
        num_held = params.remote_num_tokens // self.block_size
        if not is_taken or num_external_tokens <= 0:  # computed here (or all cached)
            self._release(request.request_id, params)
            return num_held if is_taken else None
        first = num_local // self.block_size
        stop = -(-(num_local + num_external_tokens) // self.block_size)
        local = np.asarray(blocks.get_block_ids()[0][first:stop], np.int64)
        remote = np.asarray(params.remote_block_ids[first:stop], np.int64)
        (self._pulls if self.is_async else self._fetches).append(
            PullSpec(request.request_id, params, local, remote))
        return num_held

    def request_finished(self, request) -> None:
        """A request that ends before its pull was planned still releases the other side."""
        self._num_local.pop(request.request_id, None)
        if wants_remote_prefill(request):
            request.kv_transfer_params["do_remote_prefill"] = False
            params = PullParams.from_dict(request.kv_transfer_params)
            if params is not None:
                self._release(request.request_id, params)

    def _release(self, req_id: str, params: PullParams) -> None:
        if params.seconds_left() > 0:  # after the lease the producer has freed them already
            self._pulls.append(PullSpec.release(req_id, params))

    def take_pulls(self) -> list[PullSpec]:
        pulls, self._pulls = self._pulls, []
        return pulls

    def take_fetches(self) -> list[PullSpec]:
        fetches, self._fetches = self._fetches, []
        return fetches
