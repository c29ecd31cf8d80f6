"""One-sided KV transfers between engines over UCX (UCP).

An engine process creates one `Agent` per traffic class (`kv` for Layer Block streams, `model`
for latency-critical messages); each owns a UCP context, a worker and a native progress
thread. Memory is registered once (`register`), peers are joined through
`dualkv.transfer.rendezvous`, and every move is one native call per batch of descriptors:

    handle = agent.put(peer, local, remote, local_offsets, remote_offsets, lengths,
                       request_id=r, layer=l)     # receiver: agent.wait_notice(r, l, timeout)
    agent.wait(handle, timeout); agent.release(handle)

The receiver of a put (or the caller of a get) records a notice (request_id, layer) once the
batch's bytes have landed; notices from one peer arrive in submission order. A notice whose
sender is no peer this agent connected is dropped and counted (`num_refused_notices`).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from dualkv._native import C
from dualkv.errors import InvalidArgument, PeerDisconnected, Unavailable
from dualkv.transfer import liveness

log = logging.getLogger(__name__)

TRAFFIC_CLASSES = ("model", "kv")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of one agent. `ib_sl` / `ib_traffic_class` put the class on its own InfiniBand
    service level / RoCE traffic class in production; on machines without IB they are unused.
    `tls` restricts UCX transports (e.g. "tcp"); None lets UCX choose (shared memory here)."""

    traffic_class: str = "kv"
    name: str = "dualkv"
    tls: str | None = None
    ib_sl: int | None = None
    ib_traffic_class: int | None = None
    keepalive_interval_s: float = 1.0
    op_timeout_s: float = 30.0
    spin_us: int = 200
    ucx_options: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.traffic_class not in TRAFFIC_CLASSES:
            raise InvalidArgument(f"traffic_class must be one of {TRAFFIC_CLASSES}")
        if self.op_timeout_s <= 0 or self.keepalive_interval_s <= 0:
            raise InvalidArgument("op_timeout_s and keepalive_interval_s must be > 0")
        if self.spin_us < 0:
            raise InvalidArgument("spin_us must be >= 0")

    def native_options(self) -> list[tuple[str, str]]:
        """UCX settings for ucp_config_modify (names without the UCX_ prefix)."""
        opts = [("KEEPALIVE_INTERVAL", f"{self.keepalive_interval_s}s")]
        if self.tls:
            opts.append(("TLS", self.tls))
        if self.ib_sl is not None:
            opts.append(("IB_SL", str(self.ib_sl)))
        if self.ib_traffic_class is not None:
            opts.append(("IB_TRAFFIC_CLASS", str(self.ib_traffic_class)))
        return opts + [(str(k), str(v)) for k, v in self.ucx_options]


@dataclass(frozen=True)
class Region:
    """A registered memory range; `rkey` is the packed remote key peers import."""

    id: int
    base: int
    size: int
    rkey: bytes

    def as_dict(self) -> dict:
        return {"id": self.id, "base": self.base, "size": self.size, "rkey": self.rkey}


# The worker address an agent publishes is framed: magic + version, length and a digest of
# UCX's packed address. UCX unpacks an address with assertions that abort the process on
# damaged bytes, so connect() hands it only addresses that an agent framed and that arrived
# whole. (A frame built on purpose around bad bytes still passes: connect only infos from
# peers that proved the cluster token, as the rendezvous does.)
_ADDRESS_FRAME = struct.Struct("<4sBI8s")  # b"DKVA", version 1, length, blake2b-64
_ADDRESS_MAGIC, _ADDRESS_VERSION, MAX_ADDRESS_BYTES = b"DKVA", 1, 1 << 16


def _address_digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=8, person=b"dualkv-address").digest()


def frame_address(raw: bytes) -> bytes:
    return _ADDRESS_FRAME.pack(_ADDRESS_MAGIC, _ADDRESS_VERSION, len(raw),
                               _address_digest(raw)) + raw


def unframe_address(framed) -> bytes:
    """UCX's packed address inside a frame from frame_address(); InvalidArgument otherwise."""
    if not isinstance(framed, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"a worker address is bytes, got {type(framed).__name__}")
    framed = bytes(framed)
    if len(framed) <= _ADDRESS_FRAME.size:
        raise InvalidArgument(f"a worker address of {len(framed)} bytes is too short")
    magic, version, length, digest = _ADDRESS_FRAME.unpack_from(framed)
    raw = framed[_ADDRESS_FRAME.size:]
    if magic != _ADDRESS_MAGIC or version != _ADDRESS_VERSION:
        raise InvalidArgument("not a dualkv worker address (bad magic or version)")
    if length != len(raw) or length > MAX_ADDRESS_BYTES:
        raise InvalidArgument(f"a worker address says {length} bytes, carries {len(raw)}")
    if digest != _address_digest(raw):
        raise InvalidArgument("a damaged worker address (digest mismatch)")
    return raw


def check_regions(regions) -> list[dict]:
    """A peer's declared regions, refused (InvalidArgument) unless each is a positive range
    of the 64-bit address space with integer fields, a bytes rkey and a unique id. (Ranges
    may overlap: one buffer can be registered twice.)"""
    out, ids = [], set()
    for r in regions:
        rid, base, size = r.get("id"), r.get("base"), r.get("size")
        if not all(type(v) is int for v in (rid, base, size)) or not isinstance(r.get("rkey"), bytes):
            raise InvalidArgument(f"a peer region needs integer id, base, size and bytes rkey: {r!r}")
        if rid <= 0 or base <= 0 or size <= 0 or base + size > 1 << 64 or size >= 1 << 63:
            raise InvalidArgument(f"peer region {rid}: [{base}, +{size}) is no registered range")
        if rid in ids:
            raise InvalidArgument(f"peer regions repeat id {rid}")
        ids.add(rid)
        out.append(r)
    return out


_INT64 = np.dtype(np.int64)


def as_int64(values, name: str) -> np.ndarray:
    """Descriptor column as a contiguous int64 array; floats or other kinds are refused."""
    if type(values) is np.ndarray and values.dtype is _INT64 and values.ndim == 1 \
            and values.flags.c_contiguous:
        return values  # the hot path of a per-layer put: no conversion, no copy
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgument(f"{name} must hold integers, got {arr.dtype}")
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.int64)


def buffer_address(buffer) -> tuple[int, int]:
    """(address, size in bytes) of a numpy array, torch tensor or buffer-protocol object."""
    if hasattr(buffer, "data_ptr") and hasattr(buffer, "element_size"):  # torch.Tensor
        return buffer.data_ptr(), buffer.numel() * buffer.element_size()
    arr = np.asarray(memoryview(buffer).cast("B")) if not isinstance(buffer, np.ndarray) else buffer
    if not arr.flags.c_contiguous:
        raise InvalidArgument("only contiguous buffers can be registered")
    return arr.ctypes.data, arr.nbytes


class Agent:
    """One UCP context + worker + progress thread for one traffic class of an engine."""

    def __init__(self, config: TransferConfig = TransferConfig()):
        if not hasattr(C, "Agent"):
            raise Unavailable("this build has no UCX transport (see `dualkv info`)")
        self.config = config
        self._native = C.Agent(f"{config.name}-{config.traffic_class}", _known_options(config),
                               config.op_timeout_s, config.spin_us)
        self._buffers: dict[int, object] = {}  # registered Python buffers stay alive
        # The per-layer wait calls the native method directly (same signature and checks):
        # a Python frame around it would be a sizeable share of a notice over shared memory.
        self.wait_notice = self._native.wait_notice

    @property
    def uid(self) -> int:
        return self._native.uid

    @property
    def num_refused_notices(self) -> int:
        """Notices dropped because their sender's uid is no peer this agent connected."""
        return self._native.num_refused_notices

    @property
    def num_out_of_range_notices(self) -> int:
        """Layer notices dropped because the put before them wrote outside the region this
        agent registered (the sender used altered region info): that layer never lands."""
        return self._native.num_out_of_range_notices

    @property
    def native(self):
        return self._native

    def register(self, buffer=None, *, ptr: int | None = None, size: int | None = None) -> Region:
        """Registers memory once: a buffer (numpy, torch, bytearray) or a raw (ptr, size)."""
        if buffer is not None:
            ptr, size = buffer_address(buffer)
        if ptr is None or size is None:
            raise InvalidArgument("register needs a buffer or ptr= and size=")
        region = Region(**self._native.register(int(ptr), int(size)))
        if buffer is not None:
            self._buffers[region.id] = buffer
        return region

    def alloc(self, size: int) -> tuple[Region, np.ndarray]:
        """Registered memory allocated by UCX (shared memory on one host), as a zero-copy uint8
        array. Peers on this machine put/get it one-sided; memory registered from elsewhere is
        reached through messages the owner's progress thread applies (slower puts). The array
        must not be used after deregister(), which frees the memory."""
        region = Region(**self._native.alloc(int(size)))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * region.size).from_address(region.base))
        return region, array

    def deregister(self, region: Region | int, timeout: float = 10.0) -> None:
        region_id = region.id if isinstance(region, Region) else int(region)
        self._native.deregister(region_id, timeout)
        self._buffers.pop(region_id, None)

    def regions(self) -> list[Region]:
        return [Region(**r) for r in self._native.regions()]

    def local_info(self) -> dict:
        """What a peer needs to reach this agent: uid, worker address, regions and rkeys, and
        which process this is (a peer on this host watches it: see liveness)."""
        return {"uid": self.uid, "traffic_class": self.config.traffic_class,
                "address": frame_address(self._native.worker_address),
                "regions": [r.as_dict() for r in self.regions()],
                "process": liveness.identity()}

    def connect(self, info: dict) -> int:
        """Creates the endpoint to a peer from its local_info(); refreshes it if known.
        A worker address that is not one local_info() framed, or arrived damaged, raises
        InvalidArgument before UCX sees it. A peer on this host is watched through a pidfd:
        its exit fails it with PeerDisconnected at once, on every transport."""
        address = unframe_address(info["address"])
        peer = self._native.connect(int(info["uid"]), address, check_regions(info["regions"]))
        try:
            pidfd = liveness.open_pidfd(info)
        except ProcessLookupError as exc:
            self._native.disconnect(peer, self.config.op_timeout_s)
            raise PeerDisconnected(str(exc)) from None
        if pidfd is not None:
            self._native.watch_process(peer, pidfd)  # owns the fd from here
        return peer

    def disconnect(self, peer: int, timeout: float = 5.0) -> None:
        self._native.disconnect(peer, timeout)

    def peers(self) -> list[int]:
        """Ids of the endpoints this agent holds (failed ones included until disconnect)."""
        return list(self._native.peers())

    def check_peer(self, peer: int) -> None:
        """Raises PeerDisconnected / TimedOut if the peer failed, NotFound if unknown."""
        self._native.check_peer(peer)

    def put(self, peer: int, local: Region | int, remote: int, local_offsets, remote_offsets, lengths,
            *, request_id: int = 0, layer: int = -1, block_bytes: int = 0) -> int:
        """Writes local ranges into the peer's region `remote`; layer >= 0 sends a notice."""
        # Per layer on the hot path: one Python frame, the conversions inlined (~2.8 us of
        # wrapper before, on a 2.6 us native call).
        return self._native.submit(_peer_id(peer), _region_id(local), _region_id(remote), False,
                                   as_int64(local_offsets, "local_offsets"),
                                   as_int64(remote_offsets, "remote_offsets"),
                                   as_int64(lengths, "lengths"), int(request_id), int(layer),
                                   int(block_bytes))

    def get(self, peer: int, local: Region | int, remote: int, local_offsets, remote_offsets, lengths,
            *, request_id: int = 0, layer: int = -1, block_bytes: int = 0) -> int:
        """Reads the peer's ranges into local memory; layer >= 0 records a local notice."""
        return self._native.submit(_peer_id(peer), _region_id(local), _region_id(remote), True,
                                   as_int64(local_offsets, "local_offsets"),
                                   as_int64(remote_offsets, "remote_offsets"),
                                   as_int64(lengths, "lengths"), int(request_id), int(layer),
                                   int(block_bytes))

    def prepare_put(self, peer: int, local: Region | int, remote: int, local_offsets,
                    remote_offsets, lengths, *, request_id: int, num_layers: int = 1,
                    local_layer_stride: int = 0, remote_layer_stride: int = 0,
                    block_bytes: int = 0):
        """A per-layer put validated once: layer l moves the descriptors shifted by
        l * local_layer_stride / l * remote_layer_stride, with notice (request_id, l).

        Every layer's descriptors are checked here (InvalidArgument if any falls outside its
        region). Returns a native `PreparedTransfer`: `post(layer)` posts one layer (no
        handle, no re-validation unless the agent's regions changed since), `wait(timeout)`
        returns once everything posted finished and raises its first failure
        (PeerDisconnected, TimedOut); `num_pending`, `layer_bytes`, `num_layers`."""
        return self._prepare(peer, local, remote, False, local_offsets, remote_offsets, lengths,
                             request_id, num_layers, local_layer_stride, remote_layer_stride,
                             block_bytes)

    def prepare_get(self, peer: int, local: Region | int, remote: int, local_offsets,
                    remote_offsets, lengths, *, request_id: int, num_layers: int = 1,
                    local_layer_stride: int = 0, remote_layer_stride: int = 0,
                    block_bytes: int = 0):
        """prepare_put's reading twin: post(layer) records notice (request_id, layer) here."""
        return self._prepare(peer, local, remote, True, local_offsets, remote_offsets, lengths,
                             request_id, num_layers, local_layer_stride, remote_layer_stride,
                             block_bytes)

    def _prepare(self, peer, local, remote, is_get, local_offsets, remote_offsets, lengths,
                 request_id, num_layers, local_layer_stride, remote_layer_stride, block_bytes):
        return self._native.prepare(_peer_id(peer), _region_id(local), _region_id(remote), is_get,
                                    as_int64(local_offsets, "local_offsets"),
                                    as_int64(remote_offsets, "remote_offsets"),
                                    as_int64(lengths, "lengths"), int(request_id),
                                    int(num_layers), int(local_layer_stride),
                                    int(remote_layer_stride), int(block_bytes))

    def send_notice(self, peer: int, request_id: int, layer: int) -> int:
        return self._native.send_notice(peer, request_id, layer)

    def poll(self, handle: int) -> bool:
        return self._native.poll(handle)

    def wait(self, handle: int, timeout: float) -> None:
        self._native.wait(handle, timeout)

    def release(self, handle: int) -> None:
        self._native.release(handle)

    def wait_notice(self, request_id: int, layer: int, timeout: float, peer: int = 0) -> None:
        """Returns once (request_id, layer) arrived; with `peer`, fails fast if it died.
        (Each instance calls the native method directly; this is its documentation.)"""
        self._native.wait_notice(request_id, layer, timeout, peer)

    def notices(self, request_id: int) -> np.ndarray:
        """Layers of a request in arrival order."""
        return self._native.notices(request_id)

    def clear_notices(self, request_id: int) -> None:
        self._native.clear_notices(request_id)

    def close(self) -> None:
        self._native.close()
        self._buffers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _region_id(region) -> int:
    return region.id if isinstance(region, Region) else int(region)


# Shared-memory transports detect a dead peer (needed by UCP_ERR_HANDLING_MODE_PEER) only
# with these switched on; without them UCX falls back to TCP on loopback. UCX 1.13 reads
# memory-domain settings from the environment only (ucp_config_modify does not reach them),
# so they are set here, before the first context of the process, unless the user set them.
SHM_PEER_FAILURE_ENV = {"UCX_POSIX_ERROR_HANDLING": "y", "UCX_SYSV_ERROR_HANDLING": "y"}


def _known_options(config: TransferConfig) -> list[tuple[str, str]]:
    """UCX settings for this host: IB settings only where an IB transport exists."""
    tls = set((config.tls or "all").replace("^", "").split(","))
    if tls & {"all", "sm", "shm", "posix", "sysv"}:
        for name, value in SHM_PEER_FAILURE_ENV.items():
            os.environ.setdefault(name, value)
    opts = config.native_options()
    if any(name.startswith("IB_") for name, _ in opts) and "ib" not in C.ucx_components():
        log.info("no InfiniBand transport in UCX here; ignoring ib_sl / ib_traffic_class")
        opts = [(n, v) for n, v in opts if not n.startswith("IB_")]
    return opts


def _peer_id(peer) -> int:
    if type(peer) is int:  # the per-layer hot path: getattr's miss would raise inside
        return peer
    return int(getattr(peer, "id", peer))  # a rendezvous.Peer or its id
