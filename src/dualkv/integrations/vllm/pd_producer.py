"""Serves a worker's held KV pages to other instances and frees them once read.

A producer holds a prefilled prompt for a decode instance (Basic read); a consumer holds the
hit prefix it loaded from the store for a prefill instance (DualPath read). vLLM's page tensors
(one per layer) are registered once with a UCX agent, region i = layer i; the other side's
worker joins through the token-guarded rendezvous and reads the pages one-sided. A held request
is done when the reader's PULLED notice arrived (sent after every layer's read completed), or
when its lease ends (a reader that never came, or failed).
"""
from __future__ import annotations

import logging
import time

from dualkv.integrations.vllm.pd_params import PULLED
from dualkv.transfer.rendezvous import RendezvousServer
from dualkv.transfer import Agent, TransferConfig

log = logging.getLogger(__name__)


class PageServer:
    def __init__(self, config, kv, rank: int):
        self.config = config
        self.agent = Agent(TransferConfig(name="dualkv-vllm-producer",
                                          op_timeout_s=config.timeout_s))
        self.regions = [self.agent.register(pages) for pages in kv.pages]
        port = config.rendezvous_port + rank if config.rendezvous_port else "*"
        self.server = RendezvousServer(self.agent, config.cluster_token(),
                                       f"tcp://{config.rendezvous_host}:{port}")
        self.held: dict[str, tuple[int, float]] = {}  # req_id -> (notice id, lease end)
        self.stats = {"requests_pulled": 0, "requests_expired": 0}

    @property
    def address(self) -> str:
        return self.server.address

    def hold(self, specs) -> None:
        """Starts the lease of each request handed to a decode instance."""
        for spec in specs:  # the lease starts here, after the scheduler's: never frees early
            self.held[spec.req_id] = (spec.notice_id, time.monotonic() + self.config.pull_lease_s)

    def is_held(self, req_id: str) -> bool:
        return req_id in self.held

    def take_released(self) -> set[str]:
        """Requests whose pages may be freed now: pulled, or their lease ended."""
        released, now = set(), time.monotonic()
        for req_id, (nid, lease_end) in list(self.held.items()):
            if PULLED in self.agent.notices(nid):
                self.stats["requests_pulled"] += 1
            elif now > lease_end:
                self.stats["requests_expired"] += 1
                log.warning("dualkv: no decode instance pulled %s within %.0f s; its pages are "
                            "freed", req_id, self.config.pull_lease_s)
            else:
                continue
            self.agent.clear_notices(nid)
            del self.held[req_id]
            released.add(req_id)
        return released

    def close(self) -> None:
        self.server.close()
        self.agent.close()
