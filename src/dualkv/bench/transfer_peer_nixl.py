"""NIXL's side of `transfer_peer_worker` (nixl-cu12, its UCX backend, on host memory): one
`nixl_agent` per process with its progress thread, the region registered as DRAM, metadata
exchanged both ways, batches as transfer handles made once from prepared descriptor lists
and posted again, layers as one handle each with a notification message the target polls
with get_new_notifs."""
from __future__ import annotations

import os
import time

import numpy as np

from dualkv.bench.transfer_peer_base import MmapRegion, Post, decode, encode, poll_until


def _use_tls(tls: str | None) -> None:
    """NIXL's bundled UCX reads UCX_* from the environment; over shared memory its endpoints
    ask for error handling, which UCX's posix/sysv transports offer only when told to."""
    if tls:
        os.environ["UCX_TLS"] = tls
    if not tls or any(t in tls for t in ("shm", "posix", "sysv", "all")):
        os.environ.setdefault("UCX_POSIX_ERROR_HANDLING", "y")
        os.environ.setdefault("UCX_SYSV_ERROR_HANDLING", "y")


class Backend:
    def __init__(self, role: str, region_bytes: int, tls: str | None):
        _use_tls(tls)
        from nixl_cu12._api import nixl_agent, nixl_agent_config  # only in the peers' venv

        self.region_bytes, self.role = region_bytes, role
        self.name = f"{role}-{os.getpid()}"
        self.agent = nixl_agent(self.name, nixl_agent_config(backends=["UCX"]))
        self.mem = MmapRegion(region_bytes, 1 if role == "initiator" else 0)
        self.reg = self.agent.register_memory([(self.mem.ptr, region_bytes, 0, "")], "DRAM")
        self.remote_name, self.remote_base, self.handles = None, 0, []
        self.seen: set[bytes] = set()

    def local_info(self) -> dict:
        return {"meta": encode(self.agent.get_agent_metadata()), "base": self.mem.ptr}

    def connect(self, info: dict) -> None:
        self.remote_name = self.agent.add_remote_agent(decode(info["meta"]))
        self.remote_base = info["base"]

    def _handle(self, local_offsets, remote_offsets, size: int, notif: bytes = b""):
        loc = np.array([(self.mem.ptr + int(o), size, 0) for o in local_offsets], np.uint64)
        rem = np.array([(self.remote_base + int(o), size, 0) for o in remote_offsets], np.uint64)
        handle = self.agent.initialize_xfer("WRITE", self.agent.get_xfer_descs(loc, "DRAM"),
                                            self.agent.get_xfer_descs(rem, "DRAM"),
                                            self.remote_name, notif)
        self.handles.append(handle)
        return handle

    def prepare(self, local_offsets, remote_offsets, size: int) -> Post:
        handle = self._handle(local_offsets, remote_offsets, size)
        return Post(lambda: self._post(handle), len(local_offsets), len(local_offsets) * size)

    def prepare_layers(self, local_offsets, remote_offsets, size: int, request: int):
        return [Post(lambda h=self._handle([loc], [rem], size, b"%d:%d" % (request, i)):
                     self._post(h), 1, size)
                for i, (loc, rem) in enumerate(zip(local_offsets, remote_offsets))]

    def _post(self, handle):
        if self.agent.transfer(handle) == "ERR":
            raise RuntimeError("NIXL transfer failed to post")
        return handle

    def wait(self, handle, timeout: float) -> None:
        def done():
            state = self.agent.check_xfer_state(handle)
            if state == "ERR":
                raise RuntimeError("NIXL transfer failed")
            return state == "DONE"
        poll_until(done, timeout, "NIXL transfer completion")

    def expect_layers(self, request: int, num_layers: int) -> None:
        self.seen = set()

    def wait_layers(self, request: int, num_layers: int, timeout: float) -> float:
        prefix = b"%d:" % request

        def all_seen():
            for msgs in self.agent.get_new_notifs().values():
                self.seen.update(m for m in msgs if m.startswith(prefix))
            return len(self.seen) >= num_layers
        poll_until(all_seen, timeout, f"{num_layers} NIXL notifications")
        return time.monotonic()

    def close(self) -> None:
        for handle in self.handles:
            self.agent.release_xfer_handle(handle)
        self.agent.deregister_memory(self.reg)
        if self.remote_name:
            self.agent.remove_remote_agent(self.remote_name)
