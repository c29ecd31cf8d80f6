"""dualkv's side of `transfer_peer_worker`: one `Agent` per process (kv class) with the
region registered as user memory, batches through `Agent.put`, layers through a prepared
per-layer put whose notices the target waits for with `wait_notice`."""
from __future__ import annotations

import time

import numpy as np

from dualkv.bench.transfer_peer_base import MmapRegion, Post, decode, encode
from dualkv.transfer import Agent, TransferConfig


class Backend:
    def __init__(self, role: str, region_bytes: int, tls: str | None):
        self.region_bytes = region_bytes
        self.agent = Agent(TransferConfig(traffic_class="kv", tls=tls or None))
        self.mem = MmapRegion(region_bytes, 1 if role == "initiator" else 0)
        self.region = self.agent.register(ptr=self.mem.ptr, size=region_bytes)
        self.peer = self.remote = None

    def local_info(self) -> dict:
        return {"agent": encode(self.agent.local_info())}

    def connect(self, info: dict) -> None:
        remote = decode(info["agent"])
        self.peer = self.agent.connect(remote)
        self.remote = remote["regions"][0]["id"]

    def prepare(self, local_offsets, remote_offsets, size: int) -> Post:
        loc, rem = np.asarray(local_offsets, np.int64), np.asarray(remote_offsets, np.int64)
        lengths = np.full(len(loc), size, np.int64)
        put, agent, peer, region, remote = (self.agent.put, self.agent, self.peer, self.region,
                                            self.remote)
        return Post(lambda: put(peer, region, remote, loc, rem, lengths), len(loc),
                    len(loc) * size)

    def prepare_layers(self, local_offsets, remote_offsets, size: int, request: int):
        # Layers sit at random slots, not at a fixed stride: one put with a notice each.
        posts = []
        for i, (loc, rem) in enumerate(zip(local_offsets, remote_offsets)):
            posts.append(Post(self._layer_put(int(loc), int(rem), size, request + 1, i), 1, size))
        return posts

    def _layer_put(self, loc: int, rem: int, size: int, request: int, layer: int):
        l, r, n = np.array([loc], np.int64), np.array([rem], np.int64), np.array([size], np.int64)
        put, peer, region, remote = self.agent.put, self.peer, self.region, self.remote
        return lambda: put(peer, region, remote, l, r, n, request_id=request, layer=layer)

    def wait(self, handle, timeout: float) -> None:
        self.agent.wait(handle, timeout)
        self.agent.release(handle)

    def expect_layers(self, request: int, num_layers: int) -> None:
        self.agent.clear_notices(request + 1)

    def wait_layers(self, request: int, num_layers: int, timeout: float) -> float:
        for layer in range(num_layers):  # notices from one peer arrive in order
            self.agent.wait_notice(request + 1, layer, timeout)
        return time.monotonic()

    def close(self) -> None:
        self.agent.close()
        self.mem.close()
