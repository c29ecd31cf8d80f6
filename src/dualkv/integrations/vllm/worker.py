"""Worker side: loads from the store into vLLM's pages (layer by layer), saves out of them.

Loads: the store reads each block's Layer Blocks straight into vLLM's pages ("direct": one
`load_into` per layer, so layer l can run as soon as its pages are in) or into pool slots that
are then copied into the pages ("staged", the path for device memory). Saves: after layer l's
attention, that layer's pages of the blocks that became full this step are copied into pool
slots on a copy thread while later layers compute; at the end of the step the slots go to the
store as Full Blocks (async; every store call is made from vLLM's thread). The request's pages
stay held (request_finished returned True) until its writes are verified, then get_finished
reports it.

Steps with no token to compute: vLLM keeps stepping while a request only waits on a transfer
(a decode instance's pull, an async load, pages held for another instance), back to back, each
a round trip between its engine and worker processes (whose message queues spin for a second
after every message). In such a step get_finished waits, up to idle_wait_ms, for one of the
transfers to end, so the instance steps a few times per transfer instead of thousands.

A failed load never leads to wrong KV in the store. The step that loads synchronously also
computes the rest of the prompt over the loaded pages, so when a page fails, the KV computed
in that step over it is wrong: its saves are dropped before they are written, and the request
is "poisoned" (nothing of it is saved) until the scheduler side has rolled its stored-block
count back to the failed block (it says so in a later step's metadata). The failed keys and
the dropped saves go back in the worker metadata.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dualkv.integrations.vllm.metadata import DualKVWorkerMetadata
from dualkv.integrations.vllm.pacing import NicPacer
from dualkv.integrations.vllm.pages import PagedKV, SlotPages
from dualkv.integrations.vllm.transfers import LoadBatch, RateLimitedLog, SaveBatch

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.001  # how often an idle step looks for ended transfers


class WorkerSide:
    def __init__(self, open_store, config, num_blocks: int, layout):
        self.open_store = open_store  # layout -> BlockStore, called once at registration
        self.config = config
        self.num_blocks = num_blocks
        self.layout = layout
        self.store = None
        self.kv: PagedKV | None = None
        self.slots: SlotPages | None = None
        self.copier = ThreadPoolExecutor(1, thread_name_prefix="dualkv-stage")
        self.pacer = NicPacer(config)  # emulated storage and compute NICs (off by default)
        self.meta = None
        self.is_idle_step = False  # this step computes no token (its metadata says so)
        self.sync_load: LoadBatch | None = None
        self.sync_fetch = None  # P/D: this step's layerwise fetches (pd_consumer.LayerFetch)
        self.async_loads: dict[str, LoadBatch] = {}
        self.step_save: SaveBatch | None = None
        self.saves: list[SaveBatch] = []            # staged, being written
        self.saving_req_ids: dict[str, int] = {}    # req_id -> batches still in flight
        self.finished_req_ids: set[str] = set()     # finished in vLLM, waiting on our saves
        self.load_errors: set[int] = set()
        self.load_failure_log = RateLimitedLog(log)  # a damaged disk: one line per 10 s
        self.poisoned_req_ids: set[str] = set()  # saves dropped until the scheduler rolls back
        self.news = DualKVWorkerMetadata()  # for the scheduler side, sent after the step
        self.page_server = None  # P/D producer: pages held for decode instances (pd_producer)
        self.page_puller = None  # P/D consumer: pulls prompts' KV from producers (pd_consumer)
        self.stats = {"blocks_loaded": 0, "blocks_saved": 0, "bytes_loaded": 0, "bytes_saved": 0,
                      "load_errors": 0, "save_errors": 0, "save_skipped": 0, "save_dropped": 0,
                      "load_s": 0.0, "save_s": 0.0, "save_copy_s": 0.0,
                      "idle_steps": 0, "idle_wait_s": 0.0}

    # registration -------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict) -> None:
        if self.kv is not None:
            raise RuntimeError("register_kv_caches called twice; vLLM registers its pages once")
        kv = PagedKV(kv_caches, self.num_blocks, self.layout.layer_block_bytes)
        if kv.num_layers != self.layout.num_layers:
            raise RuntimeError(f"{kv.num_layers} KV layers registered, layout has "
                               f"{self.layout.num_layers}")
        self.kv = kv
        self.store = self.open_store(self.layout)
        self.slots = SlotPages(self.store.pool, self.layout)
        if not kv.is_host and self.config.load_path == "direct":
            log.info("dualkv: KV pages are on %s: loads go through pool slots", kv.device)

    @property
    def load_path(self) -> str:
        return self.config.load_path if self.kv.is_host else "staged"

    def bind(self, meta) -> None:
        """The step's metadata, seen first by whichever hook vLLM calls first in the step."""
        self.meta = meta
        self.is_idle_step = meta.no_tokens_scheduled
        self.poisoned_req_ids -= meta.rolled_back_req_ids
        if self.page_server is not None:
            self.page_server.hold(meta.holds)
        if self.page_puller is not None:
            self.page_puller.start(meta.pulls)

    # loads ----------------------------------------------------------------------------------
    def start_load_kv(self, meta) -> None:
        if self.meta is not meta:
            self.bind(meta)
        sync_specs = [s for s in meta.loads if not s.is_async]
        for spec in meta.loads:
            if spec.is_async:
                self.async_loads[spec.req_id] = LoadBatch.submit(
                    self, [spec], layerwise=False)
        if sync_specs:
            self.sync_load = LoadBatch.submit(self, sync_specs, self.config.layerwise)
        if meta.fetches:
            self.sync_fetch = self.page_puller.fetch(meta.fetches)

    def wait_for_layer_load(self, layer_name: str) -> None:
        layer = self.kv.layer_of[layer_name]
        if self.sync_load is not None:
            self.sync_load.wait_layer(layer)
        if self.sync_fetch is not None:
            self.sync_fetch.wait_layer(layer)

    def _finish_sync_load(self) -> set[int]:
        """Waits for the step's loads and fetches; returns the vLLM block ids that failed."""
        failed = set()
        if self.sync_fetch is not None:
            fetch, self.sync_fetch = self.sync_fetch, None
            failed = fetch.finish()
            self.load_errors |= failed
        if self.sync_load is None:
            return failed
        try:
            self.sync_load.wait_all()
        finally:  # a timed-out wait still reports its blocks as failed
            failed |= self.sync_load.close()
            self.sync_load = None
        return failed

    def _drop_poisoned_saves(self, batch, failed: set[int]) -> None:
        """Saves computed over a page that failed to load in this step, or of a request whose
        earlier load failed and that the scheduler has not rolled back yet, are not written."""
        if not failed and not self.poisoned_req_ids:
            return
        failed_ids = np.fromiter(failed, np.int64, len(failed))

        def is_poisoned(spec) -> bool:
            return (spec.req_id in self.poisoned_req_ids
                    or bool(np.isin(spec.depends_on, failed_ids).any()))
        for spec in batch.drop(is_poisoned):
            self.poisoned_req_ids.add(spec.req_id)
            self.news.dropped.append((spec.req_id, spec.first_block))
            self.stats["save_dropped"] += len(spec.keys)
            log.info("dualkv: %d blocks of %s were computed over KV that failed to load; "
                     "not saved (saved again once recomputed)", len(spec.keys), spec.req_id)

    # saves ----------------------------------------------------------------------------------
    def save_kv_layer(self, layer_name: str) -> None:
        for batch in self.saves:  # one native poll each: completion times for the stats
            batch.is_done()
        if self.meta is None or not self.meta.saves:
            return
        if self.step_save is None:
            self.step_save = SaveBatch.start(self, self.meta.saves)
        self.step_save.stage_layer(self.kv.layer_of[layer_name])

    def handle_preemptions(self, meta) -> None:
        """Preempted requests' pages are reused right after this: finish reading them first."""
        if meta.preempted_req_ids:
            for batch in self.saves:
                batch.write()  # waits for its copies first

    def wait_for_save(self) -> None:
        failed = self._finish_sync_load()
        if self.meta is not None and self.meta.saves and self.step_save is None:
            self.step_save = SaveBatch.start(self, self.meta.saves)
        if self.step_save is not None:
            self._drop_poisoned_saves(self.step_save, failed)
            self.step_save.publish()
            self.saves.append(self.step_save)
            for req_id in self.step_save.req_ids:
                self.saving_req_ids[req_id] = self.saving_req_ids.get(req_id, 0) + 1
            self.step_save = None
        self.meta = None

    # completion -----------------------------------------------------------------------------
    def _is_held(self, req_id: str) -> bool:
        return self.page_server is not None and self.page_server.is_held(req_id)

    def get_finished(self, finished_req_ids: set[str]):
        """Sending: a finished request's saves are verified and, on a P/D producer, the decode
        instance has pulled its pages. Receiving: its async loads or pulls ended. In a step
        with no token to compute, waits up to idle_wait_ms for one of them."""
        self.finished_req_ids |= {r for r in finished_req_ids
                                  if r in self.saving_req_ids or self._is_held(r)}
        sending, recving, progressed = self._take_finished()
        if self.is_idle_step:
            self.is_idle_step = False
            if not progressed:
                sending, recving = self._wait_while_idle()
        return sending or None, recving or None

    def _wait_while_idle(self) -> tuple[set[str], set[str]]:
        """Until a transfer ends (what it tells vLLM or the scheduler side may let the next step
        do something), none is left, or idle_wait_ms passed."""
        self.stats["idle_steps"] += 1
        start = time.monotonic()
        deadline = start + self.config.idle_wait_ms / 1e3
        sending, recving, progressed = set(), set(), False
        while not progressed and self._has_transfers() and time.monotonic() < deadline:
            time.sleep(IDLE_POLL_S)
            sending, recving, progressed = self._take_finished()
        self.stats["idle_wait_s"] += time.monotonic() - start
        return sending, recving

    def _has_transfers(self) -> bool:
        return bool(self.saves or self.async_loads
                    or (self.page_server is not None and self.page_server.held)
                    or (self.page_puller is not None and self.page_puller.pulls))

    def _take_finished(self) -> tuple[set[str], set[str], bool]:
        """(requests done sending, done receiving, whether any transfer ended)."""
        released = self.page_server.take_released() if self.page_server is not None else ()
        for batch in self.saves:
            if batch.is_staged():
                batch.write()
        written = [b for b in self.saves if b.is_done()]
        for batch in written:
            self.saves.remove(batch)
            batch.finish()
            for req_id in batch.req_ids:
                self.saving_req_ids[req_id] -= 1
        done_sending = {r for r in self.finished_req_ids
                        if not self.saving_req_ids.get(r) and not self._is_held(r)}
        for req_id in done_sending:
            self.saving_req_ids.pop(req_id, None)
        self.finished_req_ids -= done_sending
        done_recving = set()
        for req_id, batch in list(self.async_loads.items()):
            if batch.is_done():
                batch.wait_all()
                batch.close()
                del self.async_loads[req_id]
                done_recving.add(req_id)
        if self.page_puller is not None:
            pulled, failed = self.page_puller.take_finished()
            done_recving |= pulled
            self.load_errors |= failed  # reported in this same pass, as vLLM requires
        progressed = bool(released or written or done_sending or done_recving)
        return done_sending, done_recving, progressed

    def take_load_errors(self) -> set[int]:
        errors, self.load_errors = self.load_errors, set()
        return errors

    def take_worker_meta(self) -> DualKVWorkerMetadata | None:
        news = self.news
        if not (news.saved or news.failed or news.dropped):
            return None
        self.news = DualKVWorkerMetadata()
        return news

    def shutdown(self) -> None:
        for side in (self.page_puller, self.page_server):
            if side is not None:
                side.close()
        for batch in self.saves:
            batch.write()
            batch.finish()
        self.saves.clear()
        self.copier.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
            self.store = None
