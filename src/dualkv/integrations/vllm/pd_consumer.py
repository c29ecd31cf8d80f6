"""Pulls another instance's held pages into this worker's own pages.

Async pulls (a decode instance pulling a prefilled prompt) run per request on a pull thread: join the producer (token-guarded rendezvous, once per producer),
read every layer's pages one-sided (one get per layer: remote block ids -> local block ids),
wait for all of them within the deadline, then send the producer the PULLED notice so it frees
its pages. Any failure (producer dead, refused, deadline, lease over) fails the whole request:
all its blocks are reported as load errors, so vLLM recomputes it (or fails it under "fail").
Bytes of a failed pull are never used.

Layerwise fetches (a prefill instance fetching a DualPath hit from the decode instance that
loaded it) run inside the forward: `LayerFetch` posts one get per layer in start_load_kv,
`wait_layer(l)` waits for layer l only, and at the end of the step a failure fails every block
of that request (vLLM recomputes them), a success sends the PULLED notice.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dualkv.errors import InvalidArgument, TimedOut
from dualkv.integrations.vllm.metadata import PullSpec
from dualkv.integrations.vllm.pd_params import PULLED
from dualkv.transfer.rendezvous import rendezvous
from dualkv.transfer import Agent, TransferConfig

log = logging.getLogger(__name__)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimedOut("pull deadline passed")
    return left


class PagePuller:
    def __init__(self, config, kv, pacer, num_threads: int = 4):
        self.config, self.kv, self.pacer = config, kv, pacer  # pacer: the compute NIC
        self.agent = Agent(TransferConfig(name="dualkv-vllm-consumer",
                                          op_timeout_s=config.timeout_s))
        self.regions = [self.agent.register(pages) for pages in kv.pages]
        self.token = config.cluster_token()
        self.threads = ThreadPoolExecutor(num_threads, thread_name_prefix="dualkv-pull")
        self.peers: dict[str, object] = {}  # rendezvous address -> rendezvous.Peer
        self.peers_lock = threading.Lock()
        self.pulls: dict[str, tuple] = {}  # req_id -> (future, local block ids)
        self.stats = {"blocks_pulled": 0, "bytes_pulled": 0, "pull_errors": 0, "pull_s": 0.0,
                      "blocks_fetched": 0, "bytes_fetched": 0, "fetch_errors": 0}

    def start(self, specs) -> None:
        for spec in specs:
            future = self.threads.submit(self._pull, spec)
            if len(spec.block_ids):  # release-only specs are not awaited by vLLM
                self.pulls[spec.req_id] = (future, spec.block_ids)

    def take_finished(self) -> tuple[set[str], set[int]]:
        """(requests whose pull ended, local block ids of the pulls that failed)."""
        done, failed = set(), set()
        for req_id, (future, block_ids) in list(self.pulls.items()):
            if not future.done():
                continue
            del self.pulls[req_id]
            done.add(req_id)
            if future.exception() is not None:
                self.stats["pull_errors"] += 1
                failed |= {int(b) for b in block_ids}
                log.warning("dualkv: pulling %s from its producer failed (%s: %s); vLLM "
                            "recomputes it here", req_id, type(future.exception()).__name__,
                            future.exception())
        return done, failed

    def _pull(self, spec) -> None:
        params, start = spec.params, time.monotonic()
        deadline = start + self.config.timeout_s
        if len(spec.block_ids) and params.seconds_left() < self.config.timeout_s:
            raise TimedOut("the producer's lease ends before this pull's deadline")
        peer = self._peer(params.remote_rendezvous, deadline)
        try:
            if len(spec.block_ids):
                self._read_layers(peer, spec, deadline)
            handle = self.agent.send_notice(peer.id, params.notice_id, PULLED)
            self._finish(handle, deadline)
        except Exception:
            self._forget(params.remote_rendezvous, peer)
            self._release_after_failure(spec)
            raise
        self.stats["blocks_pulled"] += len(spec.block_ids)
        self.stats["bytes_pulled"] += len(spec.block_ids) * self.kv.page_bytes * len(self.regions)
        self.stats["pull_s"] += time.monotonic() - start

    def fetch(self, specs) -> LayerFetch:
        return LayerFetch(self, specs)

    def _read_layers(self, peer, spec, deadline: float) -> None:
        handles, arrivals = self._post_layers(peer, spec)
        for handle, arrives_at in zip(handles, arrivals):
            self._finish(handle, deadline)
            self.pacer.wait_until(arrives_at, deadline)

    def _post_layers(self, peer, spec) -> tuple[list[int], list[float]]:
        """One one-sided get per layer: remote_block_ids -> block_ids. The handles, in order,
        and when each layer would have come through this node's compute NIC (pacing.py)."""
        if len(peer.regions) != len(self.regions):
            raise InvalidArgument(f"the other instance has {len(peer.regions)} KV layers, "
                                  f"this one {len(self.regions)}")
        page = self.kv.page_bytes
        local, remote = spec.block_ids * page, spec.remote_block_ids * page
        lengths = np.full(len(local), page, np.int64)
        handles = [self.agent.get(peer.id, region, peer.regions[layer].id, local, remote,
                                  lengths, block_bytes=page)
                   for layer, region in enumerate(self.regions)]
        return handles, [self.pacer.network_read(len(local) * page) for _ in handles]

    def _finish(self, handle: int, deadline: float) -> None:
        try:
            self.agent.wait(handle, _left(deadline))
        finally:
            self.agent.release(handle)

    def _peer(self, address: str, deadline: float):
        with self.peers_lock:
            peer = self.peers.get(address)
            if peer is None:
                peer = self.peers[address] = rendezvous(self.agent, address, self.token,
                                                        timeout=_left(deadline))
            return peer

    def _release_after_failure(self, spec) -> None:
        """After a failed read (its endpoint closed: nothing of it lands here any more) the
        holder is told at once, on a fresh join, so it frees the pages now instead of at its
        lease's end: a vLLM instance holding pages keeps stepping (empty steps, a busy loop)
        until it frees them. Best effort: an unreachable holder frees them at the lease."""
        if len(spec.block_ids):  # a release that fails is not released again
            self.start([PullSpec.release(spec.req_id, spec.params)])

    def _forget(self, address: str, peer) -> None:
        """Closes the endpoint (which cancels reads still in flight: nothing lands in the pages
        after the failure is reported); a failed producer is joined again next time."""
        with self.peers_lock:
            if self.peers.get(address) is peer:
                del self.peers[address]
        try:
            self.agent.disconnect(peer.id, timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - already gone (another pull closed it)
            log.debug("dualkv: disconnecting %s: %s", address, exc)

    def close(self) -> None:
        self.threads.shutdown(wait=True)  # every pull ends by its deadline
        self.agent.close()


class _Fetch:
    """One request's layerwise fetch: its peer, deadline, per-layer handles, first error."""

    def __init__(self, spec):
        self.spec, self.peer, self.deadline = spec, None, 0.0
        self.handles: list[int | None] = []
        self.arrivals: list[float] = []
        self.error: Exception | None = None


class LayerFetch:
    """One step's fetches: posted at once, waited for layer by layer."""

    def __init__(self, puller: PagePuller, specs):
        self.puller = puller
        self.fetches = [self._start(spec) for spec in specs]

    def _start(self, spec) -> _Fetch:
        fetch, puller = _Fetch(spec), self.puller
        try:  # never past the lease: the holder may reuse the pages after it
            left = min(puller.config.timeout_s, spec.params.seconds_left())
            fetch.deadline = time.monotonic() + left
            fetch.peer = puller._peer(spec.params.remote_rendezvous, fetch.deadline)
            fetch.handles, fetch.arrivals = puller._post_layers(fetch.peer, spec)
        except Exception as exc:  # noqa: BLE001 - a failed fetch is a load error, not a crash
            fetch.error = exc
        return fetch

    def wait_layer(self, layer: int) -> None:
        """Layer `layer` of every fetch is in the pages (or that fetch failed)."""
        for fetch in self.fetches:
            if fetch.error is None and fetch.handles[layer] is not None:
                handle, fetch.handles[layer] = fetch.handles[layer], None
                try:
                    self.puller._finish(handle, fetch.deadline)
                    self.puller.pacer.wait_until(fetch.arrivals[layer], fetch.deadline)
                except Exception as exc:  # noqa: BLE001
                    fetch.error = exc

    def finish(self) -> set[int]:
        """Waits for every layer; returns the local block ids of the fetches that failed (their
        endpoint closed first, so nothing lands in those pages later) and releases the holders
        of the others (PULLED, sent on the pull threads)."""
        for layer in range(len(self.puller.regions)):
            self.wait_layer(layer)
        failed, stats = set(), self.puller.stats
        for fetch in self.fetches:
            spec = fetch.spec
            if fetch.error is None:
                self.puller.start([PullSpec.release(spec.req_id, spec.params)])
                stats["blocks_fetched"] += len(spec.block_ids)
                stats["bytes_fetched"] += (len(spec.block_ids) * self.puller.kv.page_bytes
                                           * len(self.puller.regions))
                continue
            if fetch.peer is not None:
                self.puller._forget(spec.params.remote_rendezvous, fetch.peer)
                self.puller._release_after_failure(spec)
            for handle in (h for h in fetch.handles if h is not None):
                self.puller.agent.release(handle)
            stats["fetch_errors"] += 1
            failed |= {int(b) for b in spec.block_ids}
            log.warning("dualkv: fetching %s's hit from the decode instance failed (%s: %s); "
                        "vLLM recomputes it here", spec.req_id, type(fetch.error).__name__,
                        fetch.error)
        return failed
