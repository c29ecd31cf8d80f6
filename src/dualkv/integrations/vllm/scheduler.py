"""Scheduler side: prefix match against the store, and the per-step load and save plan."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dualkv.integrations.vllm.keys import block_keys
from dualkv.integrations.vllm.metadata import DualKVMetadata, LoadSpec, SaveSpec

log = logging.getLogger(__name__)


@dataclass
class _Tracked:
    request: object          # vllm Request (its block_hashes grow as tokens are generated)
    num_stored_blocks: int   # blocks [0, n) are in the store: matched there or saved by us
    has_saves: bool = False  # a save was planned: the worker reports it in finished_sending


class SchedulerSide:
    def __init__(self, store, block_size: int, hash_stride: int, config):
        self.store = store
        self.block_size = block_size
        self.hash_stride = hash_stride  # vLLM hashes per KV block (block_size / hash_block_size)
        self.config = config
        self.kv_cache_manager = None
        self._matched: dict[str, tuple[int, int]] = {}  # req_id -> (local, store) hit blocks
        self._tracked: dict[str, _Tracked] = {}
        self._loads: list[LoadSpec] = []
        self._rolled_back: set[str] = set()  # told to the worker in the next step's metadata
        self._read_blocks: dict[str, int] = {}  # req_id -> blocks loaded from the store
        # keys that failed to load (corrupt or missing) and were not saved again since: the
        # directory may still hold their files, which a disk probe would offer again
        self._failed_keys: set[bytes] = set()

    def num_full_blocks(self, request) -> int:
        return len(request.block_hashes) // self.hash_stride

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        """Store hit beyond vLLM's own, in tokens; one native call, nothing touched."""
        num_blocks = self.num_full_blocks(request)
        keys = block_keys(request.block_hashes, 0, num_blocks, self.hash_stride)
        for i, key in enumerate(keys):  # never past a block that failed to load here
            if key.tobytes() in self._failed_keys:
                keys = keys[:i]
                break
        # probe_disk: blocks other instances wrote to the shared directory since this one
        # opened it (a P/D prefill instance's, another engine's) count too
        num_hit = self.store.match(keys, touch=False, probe_disk=True) if len(keys) else 0
        num_local = num_computed_tokens // self.block_size
        self._matched[request.request_id] = (num_local, num_hit)
        # vLLM must compute at least the last prompt token to sample the next one.
        num_loadable = min(num_hit, (request.num_tokens - 1) // self.block_size)
        num_new = max(0, num_loadable - num_local)
        return num_new * self.block_size, num_new > 0 and self.config.async_load

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
        num_local, num_hit = self._matched.pop(request.request_id, (0, 0))
        tracked = self._tracked.get(request.request_id)
        if tracked is None:
            tracked = self._tracked[request.request_id] = _Tracked(request, num_hit)
        tracked.num_stored_blocks = max(tracked.num_stored_blocks, num_hit)
        if num_external_tokens <= 0:
            return
        num_load = num_external_tokens // self.block_size
        block_ids = blocks.get_block_ids()[0][num_local:num_local + num_load]
        keys = block_keys(request.block_hashes, num_local, num_local + num_load, self.hash_stride)
        self._read_blocks[request.request_id] = self._read_blocks.get(request.request_id, 0) + num_load
        self._loads.append(LoadSpec(request.request_id, keys, np.asarray(block_ids, np.int64),
                                    self.config.async_load, first_block=num_local))

    def track(self, request, num_stored_blocks: int) -> None:
        """A request whose first blocks are in the store but not loaded here (a DualPath read:
        the decode instance loaded them): its saves start after them."""
        self._matched.pop(request.request_id, None)
        tracked = self._tracked.setdefault(request.request_id, _Tracked(request, num_stored_blocks))
        tracked.num_stored_blocks = max(tracked.num_stored_blocks, num_stored_blocks)

    def build_connector_meta(self, scheduler_output) -> DualKVMetadata:
        meta = DualKVMetadata(loads=self._loads,
                              preempted_req_ids=set(scheduler_output.preempted_req_ids or ()),
                              rolled_back_req_ids=self._rolled_back)
        self._loads, self._rolled_back = [], set()
        for new in scheduler_output.scheduled_new_reqs:
            self._plan_save(meta, new.req_id, new.num_computed_tokens, scheduler_output)
        cached = scheduler_output.scheduled_cached_reqs
        for req_id, num_computed in zip(cached.req_ids, cached.num_computed_tokens):
            self._plan_save(meta, req_id, num_computed, scheduler_output)
        return meta

    def _plan_save(self, meta, req_id: str, num_computed: int, scheduler_output) -> None:
        """Blocks that become full this step and are not stored yet go out this step."""
        tracked = self._tracked.get(req_id)
        if tracked is None:
            return
        num_done = num_computed + scheduler_output.num_scheduled_tokens.get(req_id, 0)
        stop = min(num_done // self.block_size, self.num_full_blocks(tracked.request))
        start = tracked.num_stored_blocks
        if stop <= start:
            return
        depends_on = np.asarray(self.kv_cache_manager.get_block_ids(req_id)[0][:stop], np.int64)
        hashes = tracked.request.block_hashes
        keys = block_keys(hashes, start, stop, self.hash_stride)
        parent = bytes(block_keys(hashes, start - 1, start, self.hash_stride)[0]) if start else None
        meta.saves.append(SaveSpec(req_id, keys, depends_on[start:stop], parent,
                                   first_block=start, depends_on=depends_on))
        tracked.num_stored_blocks = stop
        tracked.has_saves = True

    def take_read_blocks(self, req_id: str) -> int:
        """Blocks of the request read from the store (planned, less those reported failed)."""
        return self._read_blocks.pop(req_id, 0)

    def request_finished(self, request) -> bool:
        """True holds the request's pages until the worker reports its saves done."""
        self._matched.pop(request.request_id, None)
        tracked = self._tracked.pop(request.request_id, None)
        return bool(tracked and tracked.has_saves)

    def learn(self, worker_meta) -> None:
        """One step's news from the worker: blocks now stored, blocks that failed to load and
        saves the worker dropped."""
        self.learn_saved(worker_meta.saved)
        self.forget_failed(worker_meta.failed)
        for req_id, first_block in worker_meta.dropped:
            self._roll_back(req_id, first_block)

    def forget_failed(self, failed: list[tuple[str, int, bytes]]) -> None:
        """Failed blocks leave the index at once (with the blocks chained after them, which
        the index reaches only through them), so no later request is offered them; the
        request that hit them saves again from the first one once vLLM has recomputed it."""
        if not failed:
            return
        key_bytes = self.store.cfg.key_bytes
        keys = np.frombuffer(b"".join(k for _, _, k in failed), np.uint8).reshape(-1, key_bytes)
        self.store.index.remove(keys)
        self._failed_keys.update(k for _, _, k in failed)
        for req_id, position, _ in failed:
            self._roll_back(req_id, position)
            if self._read_blocks.get(req_id):
                self._read_blocks[req_id] -= 1

    def _roll_back(self, req_id: str, position: int) -> None:
        tracked = self._tracked.get(req_id)
        if tracked is not None:
            tracked.num_stored_blocks = min(tracked.num_stored_blocks, position)
        self._rolled_back.add(req_id)  # also for a finished request: the worker forgets it

    def learn_saved(self, saved: list[tuple[bytes, bytes | None]]) -> None:
        """Blocks the worker wrote become visible to this process's prefix match (the worker's
        store has its own index; this one was built from the directory when it opened)."""
        if not saved:
            return
        self._failed_keys.difference_update(k for k, _ in saved)
        key_bytes = self.store.cfg.key_bytes
        keys = np.frombuffer(b"".join(k for k, _ in saved), np.uint8).reshape(-1, key_bytes)
        parents = np.frombuffer(b"".join(p or bytes(key_bytes) for _, p in saved),
                                np.uint8).reshape(-1, key_bytes)
        has_parent = np.array([p is not None for _, p in saved], np.uint8)
        self.store.index.insert_edges(keys, parents, has_parent, self.store.layout.full_block_bytes)
