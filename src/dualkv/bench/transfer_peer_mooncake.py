"""Mooncake Transfer Engine's side of `transfer_peer_worker`
(mooncake-transfer-engine-non-cuda, protocol `tcp`; it has no shared-memory transport): one
TransferEngine per process with P2P handshake metadata (no metadata server), the region
registered with register_memory, batches as batch_transfer_async_write waited for with
get_batch_transfer_status.

Layers: Mooncake's Python API attaches a notification (TransferNotify) only to its
synchronous calls (transfer_sync, batch_transfer_sync), so each layer is one synchronous
write with its notice; the initiator's posting loop therefore waits for each layer before the
next, which is how an engine using this API would stream them. The target reads the notices
with get_notifies."""
from __future__ import annotations

import time

from dualkv.bench.transfer_peer_base import MmapRegion, Post, poll_until

HOST = "127.0.0.1"


class Backend:
    def __init__(self, role: str, region_bytes: int, tls: str | None):
        from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode  # peers' venv

        self._notify, self._write = TransferNotify, TransferOpcode.Write
        self.region_bytes = region_bytes
        self.engine = TransferEngine()
        if self.engine.initialize(HOST, "P2PHANDSHAKE", "tcp", "") != 0:
            raise RuntimeError("Mooncake TransferEngine.initialize failed")
        self.session = f"{HOST}:{self.engine.get_rpc_port()}"
        self.mem = MmapRegion(region_bytes, 1 if role == "initiator" else 0)
        if self.engine.register_memory(self.mem.ptr, region_bytes) != 0:
            raise RuntimeError("Mooncake register_memory failed")
        self.remote_session, self.remote_base = None, 0
        self.seen: set[str] = set()

    def local_info(self) -> dict:
        return {"session": self.session, "base": self.mem.ptr}

    def connect(self, info: dict) -> None:
        self.remote_session, self.remote_base = info["session"], info["base"]

    def prepare(self, local_offsets, remote_offsets, size: int) -> Post:
        loc = [self.mem.ptr + int(o) for o in local_offsets]
        rem = [self.remote_base + int(o) for o in remote_offsets]
        lengths = [size] * len(loc)
        engine, target = self.engine, self.remote_session

        def post():
            batch_id = engine.batch_transfer_async_write(target, loc, rem, lengths)
            if batch_id <= 0:
                raise RuntimeError(f"Mooncake batch_transfer_async_write returned {batch_id}")
            return batch_id
        return Post(post, len(loc), len(loc) * size)

    def prepare_layers(self, local_offsets, remote_offsets, size: int, request: int):
        return [Post(lambda l=self.mem.ptr + int(loc), r=self.remote_base + int(rem), i=i:
                     self._layer(l, r, size, f"{request}:{i}"), 1, size)
                for i, (loc, rem) in enumerate(zip(local_offsets, remote_offsets))]

    def _layer(self, local_ptr: int, remote_ptr: int, size: int, msg: str):
        ret = self.engine.transfer_sync(self.remote_session, local_ptr, remote_ptr, size,
                                        self._write, self._notify("dualkv-bench", msg))
        if ret != 0:
            raise RuntimeError(f"Mooncake transfer_sync returned {ret}")
        return None  # already complete

    def wait(self, handle, timeout: float) -> None:
        if handle is None:
            return
        ret = self.engine.get_batch_transfer_status([handle])  # blocks until the batch ends
        if ret != 0:
            raise RuntimeError(f"Mooncake batch {handle} failed ({ret})")

    def expect_layers(self, request: int, num_layers: int) -> None:
        self.seen = set()

    def wait_layers(self, request: int, num_layers: int, timeout: float) -> float:
        prefix = f"{request}:"

        def all_seen():
            self.seen.update(n.msg for n in self.engine.get_notifies()
                             if n.msg.startswith(prefix))
            return len(self.seen) >= num_layers
        poll_until(all_seen, timeout, f"{num_layers} Mooncake notifies")
        return time.monotonic()

    def close(self) -> None:
        self.engine.unregister_memory(self.mem.ptr)
