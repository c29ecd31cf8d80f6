"""Scheduler side of the P/D roles (Basic read: the prefill instance reads the store).

Producer (`kv_producer`): a request sent with `do_remote_decode` runs as under `kv_both` (store
hit loaded, new Full Blocks saved); when it finishes, its pages stay held and its
`kv_transfer_params` say where they are, until the decode instance reports it pulled them (or
the lease ends). Consumer (`kv_consumer`): a request with `do_remote_prefill` reports its
prompt as computed elsewhere, loaded asynchronously: the worker pulls it into the pages vLLM
allocated. Nothing else touches the store on the consumer (the producer writes back).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from dualkv.integrations.vllm.metadata import HoldSpec, PullSpec
from dualkv.integrations.vllm.pd_params import (PullParams, notice_id, wants_remote_decode,
                                                wants_remote_prefill)

log = logging.getLogger(__name__)


class ProducerPlan:
    def __init__(self, engine_id: str, block_size: int, namespace: str, lease_s: float):
        self.engine_id, self.block_size = engine_id, block_size
        self.namespace, self.lease_s = namespace, lease_s
        self.rendezvous: str | None = None  # the worker's, from vLLM's handshake metadata
        self._holds: list[HoldSpec] = []    # told to the worker in the next step's metadata

    def set_handshake(self, metadata: dict) -> None:
        if 0 in metadata:
            self.rendezvous = metadata[0].rendezvous

    def request_finished(self, request, block_ids) -> tuple[bool, dict | None]:
        """Holds a prefilled request's pages for the decode instance's pull."""
        from vllm.v1.request import RequestStatus

        if not wants_remote_decode(request) or not block_ids:
            return False, None
        if request.status not in (RequestStatus.FINISHED_LENGTH_CAPPED,
                                  RequestStatus.FINISHED_STOPPED):
            return False, None  # aborted or failed: nothing to hand over
        if self.rendezvous is None:
            log.error("dualkv: no rendezvous address from the workers (handshake metadata "
                      "missing); %s cannot be handed to a decode instance", request.request_id)
            return False, None
        num_tokens = min(request.num_computed_tokens, request.num_prompt_tokens)
        num_blocks = -(-num_tokens // self.block_size)
        params = PullParams(self.engine_id, request.request_id, tuple(block_ids[:num_blocks]),
                            num_tokens, self.rendezvous, self.namespace,
                            time.time() + self.lease_s)
        self._holds.append(HoldSpec(request.request_id,
                                    notice_id(self.engine_id, request.request_id)))
        return True, params.to_dict()

    def take_holds(self) -> list[HoldSpec]:
        holds, self._holds = self._holds, []
        return holds


class ConsumerPlan:
    def __init__(self, block_size: int, namespace: str, timeout_s: float):
        self.block_size, self.namespace, self.timeout_s = block_size, namespace, timeout_s
        self._num_local: dict[str, int] = {}  # req_id -> locally cached tokens at the match
        self._pulls: list[PullSpec] = []

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        """The prompt's KV is on the producer: all of it beyond the local prefix hit, async."""
        if not wants_remote_prefill(request):
            return 0, False
        params = self._usable(request)
        if params is None:
            return 0, False
        self._num_local[request.request_id] = num_computed_tokens
        count = min(params.remote_num_tokens, request.num_prompt_tokens) - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def _usable(self, request) -> PullParams | None:
        params = PullParams.from_dict(request.kv_transfer_params)
        reason = None
        if params is None:
            reason = "malformed kv_transfer_params"
        elif params.remote_namespace != self.namespace:
            reason = f"producer namespace {params.remote_namespace!r} is not {self.namespace!r}"
        elif params.seconds_left() < self.timeout_s:
            reason = "the producer's lease ends before a pull could"
        if reason:
            log.warning("dualkv: %s is computed here, not pulled: %s", request.request_id, reason)
        return None if reason else params

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        if not wants_remote_prefill(request):
            return
        params = PullParams.from_dict(request.kv_transfer_params)
        request.kv_transfer_params["do_remote_prefill"] = False  # one pull per request
        num_local = self._num_local.pop(request.request_id, 0)
        if params is None:
            return
        if num_external_tokens <= 0:  # computed here (or all cached): only release the producer
            self._release(request.request_id, params)
            return
        first = num_local // self.block_size
        stop = -(-(num_local + num_external_tokens) // self.block_size)
        local = np.asarray(blocks.get_block_ids()[0][first:stop], np.int64)
        remote = np.asarray(params.remote_block_ids[first:stop], np.int64)
        self._pulls.append(PullSpec(request.request_id, params, local, remote))

    def request_finished(self, request) -> tuple[bool, None]:
        """A request that ends before its pull was planned still releases the producer."""
        self._num_local.pop(request.request_id, None)
        if wants_remote_prefill(request):
            request.kv_transfer_params["do_remote_prefill"] = False
            params = PullParams.from_dict(request.kv_transfer_params)
            if params is not None:
                self._release(request.request_id, params)
        return False, None

    def _release(self, req_id: str, params: PullParams) -> None:
        if params.seconds_left() > 0:  # after the lease the producer has freed them already
            self._pulls.append(PullSpec.release(req_id, params))

    def take_pulls(self) -> list[PullSpec]:
        pulls, self._pulls = self._pulls, []
        return pulls
