"""One step's batch of loads or saves against the store: few native calls, per-block results."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from dualkv.errors import OutOfMemory, StorageError

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Warnings that may come once per block (a damaged disk): at most one line every
    `interval_s` seconds, the next line saying how many were left out."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self.logger, self.interval_s = logger, interval_s
        self.last_s, self.num_suppressed = -float("inf"), 0

    def log(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.last_s < self.interval_s:
            self.num_suppressed += 1
            return
        if self.num_suppressed:
            message += f" ({self.num_suppressed} more since the last such line)"
        self.last_s, self.num_suppressed = now, 0
        self.logger.warning(message, *args)



class LoadBatch:
    """Blocks of one or more requests loaded together; per layer when layerwise."""

    @classmethod
    def submit(cls, worker, specs, layerwise: bool) -> LoadBatch:
        batch = cls()
        batch.worker, batch.store, batch.kv = worker, worker.store, worker.kv
        batch.keys = np.ascontiguousarray(np.concatenate([s.keys for s in specs]))
        batch.block_ids = np.concatenate([s.block_ids for s in specs]).astype(np.int64)
        # per block: which request it is for and where it sits in that request's chain
        batch.req_ids = [s.req_id for s in specs for _ in range(len(s.keys))]
        batch.positions = np.concatenate([s.first_block + np.arange(len(s.keys)) for s in specs])
        batch.layerwise, batch.slots, batch.ok = layerwise, None, None
        batch.start_s = time.perf_counter()
        num_layers = batch.kv.num_layers
        ranges = [(l, l + 1) for l in range(num_layers)] if layerwise else [(0, num_layers)]
        if worker.load_path == "staged":
            batch.slots = worker.store.pool.alloc(len(batch.block_ids))
            batch.handles = [batch.store.load(batch.keys, batch.slots, layers=r) for r in ranges]
        else:
            ptrs = batch.kv.page_ptrs(batch.block_ids)
            batch.handles = [batch.store.load_into(batch.keys, np.ascontiguousarray(ptrs[:, a:b]),
                                                   layers=(a, b)) for a, b in ranges]
        batch.ranges = ranges
        batch.pending = list(range(len(ranges)))
        # when each range's bytes would have come through the node's storage NIC (pacing.py)
        layer_bytes = len(batch.block_ids) * worker.layout.layer_block_bytes
        batch.arrives_at = [worker.pacer.storage_read((b - a) * layer_bytes) for a, b in ranges]
        batch.deadline = time.monotonic() + worker.config.timeout_s
        return batch

    def wait_layer(self, layer: int) -> None:
        index = layer if self.layerwise else 0
        if index in self.pending:
            self._wait(index)

    def wait_all(self) -> None:
        for index in list(self.pending):
            self._wait(index)

    def _wait(self, index: int) -> None:
        ok = self.store.wait(self.handles[index], self.worker.config.timeout_s)
        self.pending.remove(index)
        self.worker.pacer.wait_until(self.arrives_at[index], self.deadline)
        self.ok = ok if self.ok is None else (self.ok & ok)
        if self.slots is not None:
            good = torch.from_numpy(np.flatnonzero(ok))
            block_ids = torch.from_numpy(self.block_ids)[good]
            slot_ids = torch.from_numpy(np.asarray(self.slots, np.int64))[good]
            for layer in range(*self.ranges[index]):
                self.kv.scatter(layer, block_ids, self.worker.slots, slot_ids)
        # The load ends when its data is in vLLM's pages: after the staged path's scatter
        # (the span a reference connector's load covers too). Includes model compute between
        # layer waits when layerwise.
        if not self.pending:
            self.worker.stats["load_s"] += time.perf_counter() - self.start_s

    def is_done(self) -> bool:
        return (time.monotonic() >= max(self.arrives_at)
                and all(self.store.poll(self.handles[i]) for i in self.pending))

    def close(self) -> set[int]:
        """Counts the outcome and returns the vLLM block ids that failed. vLLM recomputes them
        (or fails the request); the scheduler side learns their keys and positions."""
        worker, stats = self.worker, self.worker.stats
        ok = self.ok if self.ok is not None else np.zeros(len(self.block_ids), bool)
        for handle in self.handles:  # waits for blocks still in flight (a timed-out wait)
            self.store.release(handle, worker.config.timeout_s)
        if self.slots is not None:
            self.store.pool.free(self.slots)
        failed = {int(b) for b in self.block_ids[~ok]}
        worker.load_errors |= failed
        stats["load_errors"] += len(failed)
        stats["blocks_loaded"] += int(ok.sum())
        stats["bytes_loaded"] += int(ok.sum()) * worker.layout.payload_bytes
        for row in np.flatnonzero(~ok):
            key = bytes(self.keys[row])
            worker.news.failed.append((self.req_ids[row], int(self.positions[row]), key))
            worker.poisoned_req_ids.add(self.req_ids[row])
            worker.load_failure_log.log("dualkv: block %s of request %s failed to load (missing, or "
                              "failed its checksum) from %s; vLLM recomputes it and the "
                              "connector saves it again", key.hex()[:16], self.req_ids[row],
                              self.store.io.path_of(key))
        return failed


class SaveBatch:
    """Blocks that became full in one step: staged to pool slots layer by layer, then written."""

    @classmethod
    def start(cls, worker, specs) -> SaveBatch:
        batch = cls()
        batch.worker, batch.store = worker, worker.store
        batch.specs, batch.slots = batch._alloc(worker, specs)
        batch.req_ids = {s.req_id for s in specs}
        batch.staged, batch.futures, batch.handles, batch.dropped_slots = set(), [], [], []
        batch.stage_s, batch.write_start_s = 0.0, None
        if batch.specs:
            batch.block_ids = torch.from_numpy(np.concatenate([s.block_ids for s in batch.specs]))
            batch.slot_ids = torch.from_numpy(np.concatenate(batch.slots).astype(np.int64))
        return batch

    @staticmethod
    def _alloc(worker, specs):
        """Pool slots per request chain; a chain that does not fit is left unsaved (a miss)."""
        kept, slots = [], []
        for spec in specs:
            try:
                slots.append(np.asarray(worker.store.pool.alloc(len(spec.block_ids)), np.int64))
                kept.append(spec)
            except OutOfMemory:
                worker.stats["save_skipped"] += len(spec.block_ids)
                log.warning("dualkv: host pool full, %d blocks of %s not saved",
                            len(spec.block_ids), spec.req_id)
        return kept, slots

    def drop(self, should_drop) -> list:
        """Takes the specs for which should_drop(spec) is true out of the batch, before it is
        written; their slots are freed in finish(), after the copies into them are done."""
        keep = [not should_drop(s) for s in self.specs]  # one call per spec
        dropped = [s for s, k in zip(self.specs, keep) if not k]
        self.dropped_slots += [slots for slots, k in zip(self.slots, keep) if not k]
        self.specs = [s for s, k in zip(self.specs, keep) if k]
        self.slots = [slots for slots, k in zip(self.slots, keep) if k]
        return dropped

    def stage_layer(self, layer: int) -> None:
        if not self.specs or layer in self.staged:
            return
        self.staged.add(layer)
        self.futures.append(self.worker.copier.submit(self._gather, layer))

    def _gather(self, layer: int) -> None:
        start = time.perf_counter()
        self.worker.kv.gather(layer, self.block_ids, self.worker.slots, self.slot_ids)
        self.stage_s += time.perf_counter() - start

    def publish(self) -> None:
        """Stages what save_kv_layer did not; the writes follow once the copies are done."""
        for layer in range(self.worker.kv.num_layers):
            self.stage_layer(layer)

    def is_staged(self) -> bool:
        return all(f.done() for f in self.futures)

    def wait_staged(self, timeout_s: float) -> None:
        for future in self.futures:
            future.result(timeout=timeout_s)  # re-raises a failed copy

    def write(self) -> None:
        """Submits the Full Block writes (on the caller's thread: every store call is made from
        vLLM's thread); a failed copy writes nothing."""
        if self.handles or not self.specs:
            return
        try:
            self.wait_staged(self.worker.config.timeout_s)
        except Exception as exc:
            log.warning("dualkv: staging for %s failed: %s", sorted(self.req_ids), exc)
            self.specs, failed = [], self.slots
            self.worker.stats["save_errors"] += sum(len(s) for s in failed)
            return
        self.write_start_s = time.monotonic()  # the clock of store.finished_at
        self.handles = [self.store.store(s.keys, slots, parent=s.parent)
                        for s, slots in zip(self.specs, self.slots)]

    def is_done(self) -> bool:
        if not self.handles:  # nothing to write: done once no copy is running into a slot
            return not self.specs and self.is_staged()
        return all(self.store.poll(h) for h in self.handles)

    def finish(self) -> None:
        """Verifies the writes, tells the scheduler the keys, frees the slots."""
        worker, stats = self.worker, self.worker.stats
        finished = []
        for spec, handle in zip(self.specs, self.handles):
            try:
                ok = self.store.wait(handle, worker.config.timeout_s)
            except StorageError as exc:
                log.warning("dualkv: writing blocks of %s failed: %s", spec.req_id, exc)
                ok = np.zeros(len(spec.keys), bool)
            finished.append(self.store.finished_at(handle))
            self.store.release(handle)
            parents = [spec.parent] + [bytes(k) for k in spec.keys[:-1]]
            worker.news.saved.extend((bytes(k), p) for k, p, good in zip(spec.keys, parents, ok) if good)
            stats["blocks_saved"] += int(ok.sum())
            stats["bytes_saved"] += int(ok.sum()) * worker.layout.payload_bytes
            stats["save_errors"] += int((~ok).sum())
        if self.dropped_slots:  # no copy may still be writing into a slot that is freed
            try:
                self.wait_staged(worker.config.timeout_s)
            except Exception:  # noqa: BLE001 - a failed copy was logged by write(); free anyway
                pass
        for slots in self.slots + self.dropped_slots:
            self.store.pool.free(slots)
        if self.write_start_s is not None:  # copying out of vLLM's pages + writing the files
            # until the last write finished, whenever vLLM's next call happened to look
            done_s = max(finished) if finished else time.monotonic()
            stats["save_s"] += self.stage_s + done_s - self.write_start_s
            stats["save_copy_s"] += self.stage_s  # of which: copies out of vLLM's pages
