"""What the scheduler-side connector tells the worker side each step, and what comes back.

Plain dataclasses of numpy arrays: vLLM pickles them across processes every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorMetadata,
                                                               KVConnectorWorkerMetadata)


@dataclass
class LoadSpec:
    """Blocks of one request to bring from the store into vLLM's pages."""
    req_id: str
    keys: np.ndarray       # (n, KEY_BYTES) uint8, a prefix chain
    block_ids: np.ndarray  # (n,) int64 vLLM block ids receiving them
    is_async: bool         # True: between steps, reported through get_finished
    first_block: int = 0   # position of keys[0] in the request's chain of blocks


@dataclass
class SaveSpec:
    """Blocks of one request that became full in this step and are not in the store yet."""
    req_id: str
    keys: np.ndarray       # (n, KEY_BYTES) uint8, consecutive blocks of one chain
    block_ids: np.ndarray  # (n,) int64
    parent: bytes | None   # key of the block before keys[0], None at the chain's start
    first_block: int = 0   # position of keys[0] in the request's chain of blocks
    # Every page the request's KV is computed over in this step: its blocks [0, first_block + n).
    # A page among them that failed to load in this step makes the new KV wrong: not saved.
    depends_on: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class HoldSpec:
    """A finished producer request whose pages wait for a decode instance's pull."""
    req_id: str
    notice_id: int  # the agents' id of the request: the consumer's PULLED notice carries it


@dataclass
class PullSpec:
    """Pages a consumer pulls from a producer: remote_block_ids[i] -> block_ids[i], every layer.
    No blocks: nothing to pull, the producer is only told to free the request's pages."""
    req_id: str
    params: object         # pd_params.PullParams
    block_ids: np.ndarray  # (n,) int64 local vLLM block ids
    remote_block_ids: np.ndarray

    @classmethod
    def release(cls, req_id: str, params) -> PullSpec:
        return cls(req_id, params, np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class DualKVMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    preempted_req_ids: set[str] = field(default_factory=set)
    # Requests whose stored-block count the scheduler rolled back after a failed load or a
    # dropped save: the worker may save their blocks again from here on.
    rolled_back_req_ids: set[str] = field(default_factory=set)
    holds: list[HoldSpec] = field(default_factory=list)  # P/D: pages held for another instance
    pulls: list[PullSpec] = field(default_factory=list)  # P/D: async pulls (and releases)
    fetches: list[PullSpec] = field(default_factory=list)  # P/D: sync layerwise pulls (this step)
    # vLLM steps with no token to compute while a request waits on our transfers (a decode
    # instance's pull, pages held for one): the worker then waits a little for them to end
    no_tokens_scheduled: bool = False


@dataclass
class DualKVWorkerMetadata(KVConnectorWorkerMetadata):
    """What the scheduler's bookkeeping learns from the worker after a step:
    - saved: blocks verified as written, as (key, parent key or None): the scheduler's index
      learns them without rescanning the directory;
    - failed: blocks that failed to load, as (req_id, position in the chain, key): they leave
      the scheduler's index (no later request is offered them) and the request saves again
      from there once vLLM has recomputed them;
    - dropped: saves not written because their KV was computed over a failed page, as
      (req_id, position of the first dropped block): saved again once recomputed."""
    saved: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    failed: list[tuple[str, int, bytes]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)

    def aggregate(self, other: DualKVWorkerMetadata) -> DualKVWorkerMetadata:
        # Tensor-parallel ranks each save their own shard under the same key, possibly in
        # different steps. The scheduler's index is a hint: a shard missing at load time is a
        # load error that vLLM recomputes, so a union is safe. A failure or drop on any rank
        # rolls the request back.
        return DualKVWorkerMetadata(_union(self.saved, other.saved),
                                    _union(self.failed, other.failed),
                                    _union(self.dropped, other.dropped))


def _union(mine: list, theirs: list) -> list:
    seen = set(mine)
    return mine + [e for e in theirs if e not in seen]
