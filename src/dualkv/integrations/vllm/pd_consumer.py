"""Consumer worker: pulls a prefilled request's KV from the producer into its own pages.

Per request, on a pull thread: join the producer (token-guarded rendezvous, once per producer),
read every layer's pages one-sided (one get per layer: remote block ids -> local block ids),
wait for all of them within the deadline, then send the producer the PULLED notice so it frees
its pages. Any failure (producer dead, refused, deadline, lease over) fails the whole request:
all its blocks are reported as load errors, so vLLM recomputes it (or fails it under "fail").
Bytes of a failed pull are never used.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dualkv.errors import InvalidArgument, TimedOut
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
    def __init__(self, config, kv, num_threads: int = 4):
        self.config, self.kv = config, kv
        self.agent = Agent(TransferConfig(name="dualkv-vllm-consumer",
                                          op_timeout_s=config.timeout_s))
        self.regions = [self.agent.register(pages) for pages in kv.pages]
        self.token = config.cluster_token()
        self.threads = ThreadPoolExecutor(num_threads, thread_name_prefix="dualkv-pull")
        self.peers: dict[str, object] = {}  # rendezvous address -> rendezvous.Peer
        self.peers_lock = threading.Lock()
        self.pulls: dict[str, tuple] = {}  # req_id -> (future, local block ids)
        self.stats = {"blocks_pulled": 0, "bytes_pulled": 0, "pull_errors": 0, "pull_s": 0.0}

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
            raise
        self.stats["blocks_pulled"] += len(spec.block_ids)
        self.stats["bytes_pulled"] += len(spec.block_ids) * self.kv.page_bytes * len(self.regions)
        self.stats["pull_s"] += time.monotonic() - start

    def _read_layers(self, peer, spec, deadline: float) -> None:
        if len(peer.regions) != len(self.regions):
            raise InvalidArgument(f"producer has {len(peer.regions)} KV layers, "
                                  f"this engine {len(self.regions)}")
        page = self.kv.page_bytes
        local, remote = spec.block_ids * page, spec.remote_block_ids * page
        lengths = np.full(len(local), page, np.int64)
        handles = [self.agent.get(peer.id, region, peer.regions[layer].id, local, remote,
                                  lengths, block_bytes=page)
                   for layer, region in enumerate(self.regions)]
        for handle in handles:
            self._finish(handle, deadline)

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
