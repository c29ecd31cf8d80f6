"""`KVSource` / `KVSink` between processes over the transfer engine: the node's
`TrafficManager` (kv class, paced by its compute NIC) in the cluster, or a bare `Agent`.

Both engines register their node buffer (a pool) once with their `kv`-class agent and swap
`local_info()` at rendezvous. Every move is a one-sided put of Layer Blocks followed by a
(request id, layer) notice at the receiver, in submission order per peer:

- PE → DE buffer (`RemoteBufferSink`, both read paths): layer l's KV is packed into a
  registered staging ring on the PE and put into the DE buffer's slots, token-exact (a chunk
  starting or ending mid-block writes only its tokens). The DE's `wait_landed` turns the
  notices into `BlockBuffer.mark_layer_done`, after which `Decoder.admit` proceeds.
- DE buffer → PE (de read path): the DE, after its storage read, posts `stream_hit_layers`:
  one put per layer of every hit Layer Block into the PE's receive region, and the PE's
  `RemoteLayerSource.wait_layer(l)` waits for notice l and returns views of that region.

Request ids are the scheduler's. A notice only says "arrived" (a set per request), so a
request prefilled in several chunks sends its notices with its last chunk only
(`RemoteBufferSink(notify=False)` for the others): a peer's notices go out in submission
order, after every earlier put's bytes landed, so layer l's notice then covers every chunk.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dualkv.engine.buffer import BlockBuffer
from dualkv.engine.kv import LayerBlockCodec, byte_tensor
from dualkv.errors import InvalidArgument


@dataclass(frozen=True)
class RemoteBuffer:
    """A peer's BlockBuffer as seen from here: the peer, its pool region, slot offsets."""
    peer: int
    region: int
    slot_offsets: tuple[int, ...]  # byte offset of each block's slot within the region

    @classmethod
    def of(cls, buffer: BlockBuffer, peer: int, region) -> RemoteBuffer:
        """Describes a local buffer for a peer (sent over the control plane in the cluster)."""
        base = buffer.pool.base_ptr
        return cls(peer, getattr(region, "id", region),
                   tuple(int(buffer.pool.ptr(int(s))) - base for s in buffer.slots))


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class RemoteBufferSink:
    """KVSink putting each layer's KV into a remote DE buffer, from a registered staging ring,
    through `mover` (the node's TrafficManager, or an Agent)."""

    def __init__(self, mover, staging: np.ndarray, staging_region, target: RemoteBuffer,
                 codec: LayerBlockCodec, request_id: int, depth: int = 2, region_offset: int = 0,
                 notify: bool = True):
        """`staging` is a uint8 array registered in `staging_region` at `region_offset`, split
        into `depth` equal parts; each holds one layer's KV while its put is in flight.
        `notify` False: the puts carry no (request, layer) notice (a chunk before the last)."""
        self.mover, self.staging, self.notify = mover, staging, notify
        self.region = getattr(staging_region, "id", staging_region)
        self.target, self.codec, self.request_id = target, codec, request_id
        self.region_offset = region_offset
        self.part_bytes = staging.nbytes // depth
        self._in_flight = [None] * depth  # handle per staging part
        self._next = 0
        self.timeout_s = 30.0

    def put_layer(self, layer: int, kv, first_token: int) -> None:
        bpt = self.codec.layout.bytes_per_token_layer
        nbytes = kv.shape[0] * bpt
        if nbytes > self.part_bytes:
            raise InvalidArgument(f"layer KV of {nbytes} bytes exceeds a staging part "
                                  f"of {self.part_bytes}")
        part = self._next
        self._next = (part + 1) % len(self._in_flight)
        self._retire(part, time.monotonic() + self.timeout_s)  # the ring slot is free again
        base = part * self.part_bytes
        # the D2H copy on a GPU; kv rows are whole tokens, so its bytes are the wire format
        byte_tensor(self.staging[base:base + nbytes]).copy_(kv.contiguous().view(-1).view(torch.uint8))
        local, remote, lengths = self._descriptors(layer, first_token, kv.shape[0],
                                                   self.region_offset + base)
        self._in_flight[part] = self.mover.put(self.target.peer, self.region, self.target.region,
                                               local, remote, lengths,
                                               request_id=self.request_id,
                                               layer=layer if self.notify else -1)

    def _descriptors(self, layer, first_token, num_tokens, base):
        bt, bpt = self.codec.block_tokens, self.codec.layout.bytes_per_token_layer
        layer_offset = self.codec.layout.layer_offset(layer)
        end, local, remote, lengths = first_token + num_tokens, [], [], []
        for block in range(first_token // bt, -(-end // bt)):
            lo, hi = max(first_token, block * bt), min(end, (block + 1) * bt)
            local.append(base + (lo - first_token) * bpt)
            remote.append(self.target.slot_offsets[block] + layer_offset + (lo - block * bt) * bpt)
            lengths.append((hi - lo) * bpt)
        return local, remote, lengths

    def _retire(self, part: int, deadline: float) -> None:
        handle, self._in_flight[part] = self._in_flight[part], None
        if handle is not None:
            try:
                self.mover.wait(handle, _left(deadline))
            finally:
                self.mover.release(handle)

    def finish(self, deadline: float) -> None:
        for part in range(len(self._in_flight)):
            self._retire(part, deadline)


def wait_landed(agent, buffer: BlockBuffer, request_id: int, deadline: float, peer: int = 0):
    """DE side: waits for every layer's notice of `request_id`, marking the buffer complete."""
    for layer in range(buffer.layout.num_layers):
        agent.wait_notice(request_id, layer, _left(deadline), peer)
        buffer.mark_layer_done(layer)
    agent.clear_notices(request_id)


def stream_hit_layers(mover, buffer: BlockBuffer, local_region, num_blocks: int, peer: int,
                      remote_region, request_id: int, remote_offset: int = 0):
    """DE side of the de read path: puts Layer Block l of the first num_blocks blocks of the
    buffer into the PE's receive region at remote_offset ([layer][block][layer_block_bytes]),
    layer by layer, each followed by notice (request_id, l). `mover` is the node's
    TrafficManager (kv class: chunked, paced by its compute NIC) or a bare Agent; one native
    put per layer. Returns the stream: `wait(timeout)` once the PE has every layer (raises the
    first failure)."""
    layout, base = buffer.layout, buffer.pool.base_ptr
    lbb = layout.layer_block_bytes
    slots = np.fromiter((int(buffer.pool.ptr(int(s))) - base for s in buffer.slots[:num_blocks]),
                        np.int64, num_blocks)
    local_region = getattr(local_region, "id", local_region)
    remote_region = getattr(remote_region, "id", remote_region)
    remote = remote_offset + np.arange(num_blocks, dtype=np.int64) * lbb
    lengths = np.full(num_blocks, lbb, np.int64)
    stream = LayerStream(mover)
    for layer in range(layout.num_layers):
        stream.handles.append(mover.put(peer, local_region, remote_region,
                                        slots + layout.layer_offset(layer),
                                        remote + layer * num_blocks * lbb, lengths,
                                        request_id=request_id, layer=layer))
    return stream


class LayerStream:
    """The puts of one streamed hit: waited for and released together."""

    def __init__(self, mover):
        self.mover, self.handles = mover, []

    @property
    def num_pending(self) -> int:
        """Puts not yet waited for."""
        return len(self.handles)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            for handle in self.handles:
                self.mover.wait(handle, _left(deadline))
        finally:
            for handle in self.handles:
                self.mover.release(handle)
            self.handles = []


class RemoteLayerSource:
    """PE side of the de read path: hit Layer Blocks put by the DE into a receive region."""

    def __init__(self, agent, recv: np.ndarray, num_blocks: int, layout, request_id: int,
                 peer: int = 0):
        if recv.nbytes < layout.num_layers * num_blocks * layout.layer_block_bytes:
            raise InvalidArgument("receive region smaller than the hit's Layer Blocks")
        self.agent, self.recv, self.num_blocks, self.layout = agent, recv, num_blocks, layout
        self.request_id, self.peer = request_id, peer

    def prepare(self, deadline: float) -> int:
        return self.num_blocks * self.layout.block_tokens

    def wait_layer(self, layer: int, deadline: float):
        self.agent.wait_notice(self.request_id, layer, _left(deadline), self.peer)
        lbb, first = self.layout.layer_block_bytes, layer * self.num_blocks
        return [byte_tensor(self.recv[(first + b) * lbb:(first + b + 1) * lbb])
                for b in range(self.num_blocks)]

    def release_layer(self, layer: int) -> None:
        pass

    def close(self) -> None:
        self.agent.clear_notices(self.request_id)
