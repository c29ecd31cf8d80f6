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


@dataclass
class SaveSpec:
    """Blocks of one request that became full in this step and are not in the store yet."""
    req_id: str
    keys: np.ndarray       # (n, KEY_BYTES) uint8, consecutive blocks of one chain
    block_ids: np.ndarray  # (n,) int64
    parent: bytes | None   # key of the block before keys[0], None at the chain's start


@dataclass
class DualKVMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    preempted_req_ids: set[str] = field(default_factory=set)


@dataclass
class DualKVWorkerMetadata(KVConnectorWorkerMetadata):
    """Blocks the worker verified as written, as (key, parent key or None): the scheduler's
    index learns them without rescanning the directory."""
    saved: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    def aggregate(self, other: DualKVWorkerMetadata) -> DualKVWorkerMetadata:
        # Tensor-parallel ranks each save their own shard under the same key, possibly in
        # different steps. The scheduler's index is a hint: a shard missing at load time is a
        # load error that vLLM recomputes, so a union is safe.
        mine = set(self.saved)
        return DualKVWorkerMetadata(self.saved + [e for e in other.saved if e not in mine])
