"""The per-node traffic manager: every bulk move of a node goes through it.

`model` work (latency-critical messages) is posted at once; `kv` work (Layer Block streams,
host<->device copies) is cut into `chunk_bytes` chunks that wait while any model work is in
flight, so a KV stream delays a model message by at most `kv_window` chunks. Token buckets in
shared memory cap the node's storage NIC and compute NIC (`snic_gbps`, `cnic_gbps`, in GB/s =
1e9 bytes/s, 0 = uncapped): the processes of one emulated node open the same buckets and so
share one NIC's bandwidth. The storage reader pays for every read with `tm.snic.acquire` (or
`reserve_until`); storage writes are charged to `tm.snic_tx`, the NIC's other direction.

    tm = TrafficManager(TrafficConfig(node="n0", cnic_gbps=5), kv_agent=kv, model_agent=model)
    h = tm.put(peer, local, remote, loc, rem, lengths, request_id=r, layer=l)   # kv class
    h = tm.copy(dst, src)               # memcpy on CPU; CUDA async copy on a low-priority stream
    tm.wait(h, timeout); tm.release(h)
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass


from dualkv._native import C
from dualkv.errors import InvalidArgument, NotFound, TimedOut
from dualkv.transfer.agent import _peer_id, _region_id, as_int64, buffer_address

CLASSES = {"model": 0, "kv": 1}


def copy_ranges(dst_ptrs, src_ptrs, lengths) -> None:
    """Copies lengths[i] bytes from address src_ptrs[i] to dst_ptrs[i] now, on this thread,
    with the GIL released: the traffic manager's host copy without its pacing, for staging
    copies that run beside a model's forward (e.g. the vLLM connector's). The caller owns both
    sides and keeps them alive and unchanged until it returns."""
    C.copy_ranges(as_int64(dst_ptrs, "dst_ptrs"), as_int64(src_ptrs, "src_ptrs"),
                  as_int64(lengths, "lengths"))


@dataclass(frozen=True)
class TrafficConfig:
    node: str = "node0"
    chunk_bytes: int = 512 * 1024
    kv_window: int = 1
    kv_min_share: float = 0.1  # kv's floor of the bytes while model traffic saturates
    snic_gbps: float = 0.0
    cnic_gbps: float = 0.0
    burst_bytes: int = 1 << 20
    shm_dir: str = "/dev/shm"

    def __post_init__(self):
        if not 4096 <= self.chunk_bytes <= 1 << 30:
            raise InvalidArgument("chunk_bytes must be within 4 KiB .. 1 GiB")
        if self.kv_window < 1 or self.burst_bytes < 0:
            raise InvalidArgument("kv_window must be >= 1 and burst_bytes >= 0")
        if not 0 <= self.kv_min_share <= 0.9:
            raise InvalidArgument("kv_min_share must be within 0 .. 0.9")
        if self.snic_gbps < 0 or self.cnic_gbps < 0:
            raise InvalidArgument("NIC caps must be >= 0 GB/s (0 = uncapped)")
        if not self.node or "/" in self.node:
            raise InvalidArgument(f"node name {self.node!r} must be non-empty without '/'")


def open_bucket(node: str, nic: str, gbps: float, burst_bytes: int = 1 << 20,
                shm_dir: str = "/dev/shm", max_backlog_s: float = 60.0):
    """The shared token bucket of `nic` ("snic" / "cnic") on emulated node `node`:
    `bucket.acquire(num_bytes, timeout)` blocks until the bytes may go (TimedOut if they
    could not go in time; nothing is taken then), `bucket.debit(num_bytes)` charges without
    waiting. The same object exists in C++ (dualkv/token_bucket.h).

    The file is shared by every process of the node, so it is checked, not trusted: a damaged
    state is reset (`num_repairs`), a truncated file is grown back instead of raising SIGBUS,
    and no call queues more than `max_backlog_s` of traffic (a larger acquire or debit raises
    InvalidArgument), so one huge debit cannot stall the node. (60 s: a NIC queue that long
    means the emulation is broken, not loaded.)"""
    path = os.path.join(shm_dir, f"dualkv-{node}-{nic}.bucket")
    return C.TokenBucket(path, gbps * 1e9, burst_bytes, max_backlog_s)


class TrafficManager:
    def __init__(self, config: TrafficConfig = TrafficConfig(), kv_agent=None, model_agent=None):
        self.config = config
        self.snic = open_bucket(config.node, "snic", config.snic_gbps, config.burst_bytes,
                                config.shm_dir)
        self.cnic = open_bucket(config.node, "cnic", config.cnic_gbps, config.burst_bytes,
                                config.shm_dir)
        # storage writes: the storage NIC's transmit direction (a NIC is full duplex, so
        # writes never delay reads); charged with snic_tx.debit, at the storage NIC's rate
        self.snic_tx = open_bucket(config.node, "snic-tx", config.snic_gbps,
                                   config.burst_bytes, config.shm_dir)
        self.agents = {"kv": kv_agent, "model": model_agent}
        self._native = C.TrafficManager(config.chunk_bytes, config.kv_window, self.cnic,
                                        kv_min_share=config.kv_min_share)
        self._cuda = None  # created on the first device copy
        self._cuda_ids = itertools.count(1 << 62)

    def put(self, peer, local, remote, local_offsets, remote_offsets, lengths, *,
            request_id: int = 0, layer: int = -1, block_bytes: int = 0, cls: str = "kv") -> int:
        return self._rma(False, peer, local, remote, local_offsets, remote_offsets, lengths,
                         request_id, layer, block_bytes, cls)

    def get(self, peer, local, remote, local_offsets, remote_offsets, lengths, *,
            request_id: int = 0, layer: int = -1, block_bytes: int = 0, cls: str = "kv") -> int:
        return self._rma(True, peer, local, remote, local_offsets, remote_offsets, lengths,
                         request_id, layer, block_bytes, cls)

    def _rma(self, is_get, peer, local, remote, loc, rem, lengths, request_id, layer,
             block_bytes, cls) -> int:
        agent = self.agents[_class(cls)]
        if agent is None:
            raise InvalidArgument(f"this traffic manager has no {cls} agent")
        return self._native.submit_rma(agent.native, _peer_id(peer), _region_id(local),
                                       _region_id(remote), is_get,
                                       as_int64(loc, "local_offsets"),
                                       as_int64(rem, "remote_offsets"),
                                       as_int64(lengths, "lengths"), int(request_id), int(layer),
                                       int(block_bytes), CLASSES[cls])

    def copy(self, dst, src, cls: str = "kv") -> int:
        """Copies src into dst (same byte size): host buffers by memcpy in chunks; torch CUDA
        tensors by an async copy on a stream of the class's priority."""
        _class(cls)
        if _is_cuda(dst) or _is_cuda(src):
            return self._cuda_copy(dst, src, cls)
        (dst_ptr, dst_bytes), (src_ptr, src_bytes) = buffer_address(dst), buffer_address(src)
        if dst_bytes != src_bytes:
            raise InvalidArgument(f"copy of {src_bytes} bytes into {dst_bytes} bytes")
        return self.copy_ptrs([dst_ptr], [src_ptr], [src_bytes], cls)

    def copy_ptrs(self, dst_ptrs, src_ptrs, lengths, cls: str = "kv") -> int:
        """Host copies between raw addresses (e.g. pool slots), one native call per batch."""
        return self._native.submit_copy(as_int64(dst_ptrs, "dst_ptrs"),
                                        as_int64(src_ptrs, "src_ptrs"),
                                        as_int64(lengths, "lengths"), CLASSES[_class(cls)])

    def _cuda_copy(self, dst, src, cls) -> int:
        from dualkv.transfer.traffic_cuda import CudaCopier

        if self._cuda is None:
            self._cuda = CudaCopier(self.cnic)
        return self._cuda.copy(next(self._cuda_ids), dst, src, cls)

    def poll(self, handle: int) -> bool:
        if handle >= 1 << 62:
            return self._cuda_or_raise(handle).poll(handle)
        return self._native.poll(handle)

    def wait(self, handle: int, timeout: float) -> None:
        if handle >= 1 << 62:
            return self._cuda_or_raise(handle).wait(handle, timeout)
        self._native.wait(handle, timeout)

    def release(self, handle: int) -> None:
        if handle >= 1 << 62:
            return self._cuda_or_raise(handle).release(handle)
        self._native.release(handle)

    def _cuda_or_raise(self, handle):
        if self._cuda is None:
            raise NotFound(f"unknown handle {handle}")
        return self._cuda

    def stats(self) -> dict:
        return dict(self._native.stats())

    def close(self) -> None:
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _class(cls: str) -> str:
    if cls not in CLASSES:
        raise InvalidArgument(f"traffic class must be one of {sorted(CLASSES)}, got {cls!r}")
    return cls


def _is_cuda(x) -> bool:
    return getattr(x, "is_cuda", False) is True


def measure_rate(bucket, num_bytes: int, chunk_bytes: int, timeout: float = 60.0) -> float:
    """Bytes per second that `bucket` grants to a stream of `chunk_bytes` acquires."""
    start = time.perf_counter()
    for _ in range(max(1, num_bytes // chunk_bytes)):
        bucket.acquire(chunk_bytes, timeout)
    elapsed = time.perf_counter() - start
    if elapsed <= 0:
        raise TimedOut("clock did not advance")
    return (num_bytes // chunk_bytes) * chunk_bytes / elapsed


__all__ = ["TrafficConfig", "TrafficManager", "open_bucket", "measure_rate"]
