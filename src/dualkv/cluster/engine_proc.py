"""One engine process of the local cluster: a prefill (PE) or decode (DE) engine with its own
store handle on the shared block directory, its own `kv` transfer agent, and a REP socket.

Run as `python -m dualkv.cluster.engine_proc --role pe|de --endpoint ipc://... --root DIR
--model JSON`. A PE serves one prefill batch per message: the chunks of one `PrefillBatcher`
batch, formed by the driver (batching.py); it keeps a chunked request's KV between its chunks.
A DE (decode_server.py) decodes between messages: requests admitted while others decode join
the running batch. Each engine pushes its load (read queue, unfinished requests and tokens,
free DE buffer) to the scheduler process after every change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from dualkv.cluster.decode_server import DecodeServer
from dualkv.cluster.arrival import ArrivesAt
from dualkv.cluster.messages import (Ack, Admit, Connected, Drop, HelloReply, LoadReport, Open,
                                     Prefill, Prefilled, PrefillResult, StatsReply, Stop, encode)
from dualkv.cluster.protocol import serve
from dualkv.engine import (BlockBuffer, BufferSink, BufferSource, EngineConfig,
                           LayerBlockCodec, Model, ModelConfig, PrefillItem, SlotSource,
                           prefill_basic_batch, prefill_batch)
from dualkv.engine.remote import RemoteBuffer, RemoteBufferSink, RemoteLayerSource
from dualkv.errors import InvalidArgument, PeerDisconnected
from dualkv.store import BlockStore, StoreConfig
from dualkv.transfer import Agent, TransferConfig
from dualkv.transfer.traffic import TrafficConfig, TrafficManager


# The emulated NICs run at MB/s here (a 2-core machine stands in for a cluster): a 1 MiB burst
# would let a whole layer through free. 64 KiB keeps the pacing smooth at these rates.
NIC_BURST_BYTES = 64 * 1024


@dataclass
class Partial:
    """A request prefilled in chunks, between two of its chunks: KV of [0, end) kept in this
    PE's pool (a real engine keeps it in HBM), and the hit blocks its first chunk loaded."""
    buffer: BlockBuffer
    end: int = 0
    num_cached_blocks: int = 0


class EngineServer:
    def __init__(self, args):
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        spec = json.loads(args.model)
        self.cfg = ModelConfig(**spec["config"])
        engine = EngineConfig(args.device, args.block_tokens, args.timeout_s)
        self.model = Model.from_seed(self.cfg, spec["seed"], engine.torch_device,
                                     spec["batch_invariant"])
        self.codec = LayerBlockCodec(self.cfg, engine.block_tokens)
        layout = self.cfg.layout(engine.block_tokens)
        self.store = BlockStore(StoreConfig(args.root, layout, pool_slots=args.pool_slots,
                                            cuda="off"))
        self.agent = Agent(TransferConfig(name=f"{args.role}-engine"))
        pool = self.store.pool
        self.pool_region = self.agent.register(ptr=pool.base_ptr, size=pool.size_bytes)
        max_tokens = args.max_tokens
        self._staging_token_bytes = 2 * layout.bytes_per_token_layer  # 2 layers in flight
        self.staging = np.zeros(max_tokens * self._staging_token_bytes, np.uint8)
        self.recv = np.zeros(layout.num_layers * (max_tokens // layout.block_tokens + 1)
                             * layout.layer_block_bytes, np.uint8)
        self.staging_region = self.agent.register(self.staging)
        self.recv_region = self.agent.register(self.recv)
        # every bulk move of this node goes through its traffic manager: storage reads pay the
        # storage NIC's bucket, KV to other nodes the compute NIC's (kv class, chunked)
        self.tm = TrafficManager(TrafficConfig(
            node=args.node, snic_gbps=args.snic_mbps / 1e3, cnic_gbps=args.cnic_mbps / 1e3,
            chunk_bytes=NIC_BURST_BYTES, burst_bytes=NIC_BURST_BYTES, shm_dir=args.shm_dir),
            kv_agent=self.agent)
        self.snic_bytes = 0  # read through the storage NIC
        self.timeout_s = engine.timeout_s
        self.decode = DecodeServer(self) if args.role == "de" else None
        self.engine_id, self.reports, self.max_rid = args.engine_id, None, 0
        self.partial: dict[int, Partial] = {}  # PE: rid -> a chunked request between chunks
        if args.sched_reports:  # engines report their load to the scheduler process
            self.reports = zmq.Context.instance().socket(zmq.PUSH)
            self.reports.setsockopt(zmq.LINGER, 0)
            self.reports.setsockopt(zmq.SNDHWM, 64)
            self.reports.connect(args.sched_reports)

    def op_hello(self, msg) -> HelloReply:
        return HelloReply(info=self.agent.local_info(), pool_region=self.pool_region.id,
                          recv_region=self.recv_region.id)

    def op_connect(self, msg) -> Connected:
        return Connected(peer=self.agent.connect(msg.info))

    def op_stop(self, msg) -> Ack:
        return Ack()

    # -- DE ops (decode_server.py) ---------------------------------------------------------
    def op_open(self, msg):
        return self.decode.open(msg)

    def op_admit(self, msg):
        return self.decode.admit(msg)

    def op_poll(self, msg):
        return self.decode.poll(msg)

    def op_drop(self, msg):
        return self.decode.drop(msg)

    # -- PE ops ---------------------------------------------------------------------------
    def op_prefill(self, msg) -> Prefilled:
        """PE: one forward over the chunks of one batch (layerwise; Basic: every cached KV
        loaded whole first, KV sent after the forward), each chunk's new KV put into its
        request's DE buffer. A request's first chunk reads its hit; a chunk that is not the
        last keeps [0, end) here (`self.partial`) for the next one, and puts without notices:
        the last chunk's notices tell the DE the whole prompt landed."""
        self.max_rid = max([self.max_rid] + [req.rid for req in msg.requests])
        self._drop_partial(keep={req.rid for req in msg.requests})
        peers = sorted({req.de_peer for req in msg.requests})
        sources, items = [], []
        try:
            total, start = sum(req.end for req in msg.requests), 0
            for req in msg.requests:
                source, item = self._chunk(req, lambda: self._check_peers(peers), start, total)
                sources.append(source)
                items.append(item)
                start += req.end
            run = prefill_basic_batch if msg.mode == "basic" else prefill_batch
            firsts = run(self.model, items, self.codec, self.timeout_s)
            deadline = time.monotonic() + self.timeout_s
            cached = [self._chunk_done(req, source, deadline)
                      for req, source in zip(msg.requests, sources)]
        except BaseException:
            self._abandon(items, [req.rid for req in msg.requests])
            raise
        finally:
            for source in sources:
                source.close()
        done_at = time.monotonic()  # the first tokens' time (the driver polls for replies)
        return Prefilled(results=[PrefillResult(first_token=f, num_cached_blocks=c, done_at=done_at)
                                  for f, c in zip(firsts, cached)])

    def _chunk(self, req, check, start: int, total: int):
        """The chunk's source (its hit on a first chunk, else [0, cached) kept here), and its
        PrefillItem: the sink into its DE buffer, and a keep sink unless it is the last."""
        partial = self.partial.get(req.rid)
        if partial is None:
            source = self._source(req, check)
        elif partial.end != req.cached:
            raise InvalidArgument(f"request {req.rid}: chunk from {req.cached}, but "
                                  f"{partial.end} tokens were prefilled")
        else:
            source = BufferSource(partial.buffer, partial.end)
        target = RemoteBuffer(req.de_peer, req.de_region, tuple(req.slot_offsets))
        part = self._staging_part(start, req.end, total)
        offset = part.ctypes.data - self.staging.ctypes.data
        sink = RemoteBufferSink(self.tm, part, self.staging_region, target, self.codec,
                                req.rid, region_offset=offset, notify=req.is_last)
        keep = None
        if not req.is_last:
            if partial is None:
                buffer = BlockBuffer(self.store.pool, self.store.layout, len(req.prompt))
                self.partial[req.rid] = Partial(buffer)
            keep = BufferSink(self.partial[req.rid].buffer, self.codec)
        return source, PrefillItem(req.prompt, source, sink, req.read_side, end=req.end,
                                   first_chunk=partial is None, keep=keep)

    def _chunk_done(self, req, source, deadline: float) -> int:
        """After the forward: the request's loadable hit blocks (found by its first chunk);
        its kept KV grows to `end`, or is freed with its last chunk."""
        partial = self.partial.get(req.rid)
        if partial is None or partial.end == 0:  # a first chunk: its source read the hit
            num_cached = source.prepare(deadline) // self.codec.block_tokens
        else:
            num_cached = partial.num_cached_blocks
        if req.is_last:
            self._drop_partial(drop=[req.rid])
        else:
            partial.end, partial.num_cached_blocks = req.end, num_cached
        return num_cached

    def _abandon(self, items, rids) -> None:
        """A failed batch: its keep sinks settle (never a write into a freed slot), and the
        KV kept for its requests is freed (the driver submits them again from scratch)."""
        for item in items:
            if item.keep is not None:
                try:
                    item.keep.finish(time.monotonic() + 5.0)
                except Exception:
                    pass
        self._drop_partial(drop=rids)

    def _drop_partial(self, keep=None, drop=()) -> None:
        """Frees the kept KV of `drop`, or of every request not in `keep`: a chunked request
        continues in its PE's very next batch, so one missing from it was given up."""
        rids = [r for r in self.partial if r not in keep] if keep is not None else drop
        for rid in rids:
            partial = self.partial.pop(rid, None)
            if partial is not None:
                partial.buffer.free()

    def _source(self, req, check):
        """The request's hit: streamed by its DE (de side) or read here (pe side), counted as
        arrived when the emulated NIC delivers it; the wait checks the batch's DEs live."""
        if req.read_side == "de":
            source = RemoteLayerSource(self.agent, self.recv[req.recv_offset:], req.num_hit_blocks,
                                       self.store.layout, req.rid, req.de_peer)
            return ArrivesAt(source, req.ready_at, check)
        keys = np.frombuffer(req.hit_keys, np.uint8).reshape(-1, 32)
        ready_at = self.read_through_snic(len(keys))
        return ArrivesAt(SlotSource.load(self.store, keys), ready_at, check)

    def read_through_snic(self, num_blocks: int) -> float:
        """Charges a storage read of num_blocks Full Blocks to this node's storage NIC: the
        bytes are read for real at once, and count as arrived when the NIC would have
        delivered them (the returned monotonic time), queued behind the node's earlier reads."""
        num_bytes = num_blocks * self.store.layout.full_block_bytes
        self.snic_bytes += num_bytes
        return self.tm.snic.reserve_until(num_bytes)

    def _check_peers(self, peers) -> None:
        """Raises PeerDisconnected naming the first DE of a batch whose process died (the
        transfer layer's keepalive marks it within about a second)."""
        for peer in peers:
            try:
                self.agent.check_peer(peer)
            except PeerDisconnected as exc:
                raise PeerDisconnected(f"DE peer {peer} of this prefill batch: {exc}") from None

    def op_stats(self, msg) -> StatsReply:
        return StatsReply(snic_bytes=self.snic_bytes)

    def _staging_part(self, first_token: int, num_tokens: int, total: int) -> np.ndarray:
        """A request's share of the staging ring, in proportion to its prompt."""
        size = self.staging.nbytes // max(total, self.staging.nbytes // self._staging_token_bytes)
        return self.staging[first_token * size:(first_token + num_tokens) * size]

    def report(self) -> None:
        """Pushes this engine's load to the scheduler process (engine id = node = group)."""
        if self.reports is None:
            return
        per_token = self.store.layout.full_block_bytes / self.codec.block_tokens
        read_q = int(self.tm.snic.backlog_s * self.tm.snic.bytes_per_s / per_token)
        report = LoadReport(engine=self.engine_id, read_q=read_q, max_rid=self.max_rid)
        if self.decode is not None:
            d = self.decode
            report = LoadReport(engine=self.engine_id, read_q=read_q, max_rid=d.max_rid,
                                seq=len(d.opened) + len(d.running), tok=d.num_tokens(),
                                free_tokens=d.free_tokens())
        try:
            self.reports.send(encode(report), zmq.NOBLOCK)
        except zmq.Again:  # the scheduler is not reading yet: a later report supersedes this
            pass

    def serve(self, endpoint: str) -> None:
        socket = zmq.Context.instance().socket(zmq.REP)
        socket.bind(endpoint)
        self.report()
        while True:
            busy = self.decode is not None and self.decode.is_busy
            if socket.poll(0 if busy else 100):  # a message between decode steps
                msg, reply = serve(self, socket.recv())
                socket.send(reply)
                if isinstance(msg, Stop):
                    break
                if isinstance(msg, (Open, Admit, Prefill, Drop)):
                    self.report()
            if busy:
                num_done = len(self.decode.finished)
                self.decode.step()
                if len(self.decode.finished) != num_done:
                    self.report()
        if self.reports is not None:
            self.reports.close(0)
        self.tm.close()
        self.agent.close()
        self.store.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="dualkv.cluster.engine_proc")
    p.add_argument("--role", choices=("pe", "de"), required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--model", required=True, help="JSON: {config: {...}, seed, batch_invariant}")
    p.add_argument("--block-tokens", type=int, default=64)
    p.add_argument("--pool-slots", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--device", default="cpu", help='torch device, or "auto" (CUDA if present)')
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--engine-id", type=int, default=0, help="the scheduler's engine id")
    p.add_argument("--sched-reports", default=None,
                   help="the scheduler process's report endpoint (PUSH of load reports)")
    p.add_argument("--snic-mbps", type=float, default=0.0,
                   help="emulated storage NIC of this node, MB/s (0: unlimited)")
    p.add_argument("--cnic-mbps", type=float, default=0.0,
                   help="emulated compute NIC of this node (KV to other nodes), MB/s (0: unlimited)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch CPU threads of this engine (0: torch's default)")
    p.add_argument("--node", default="node0", help="this node's name (its NIC buckets)")
    p.add_argument("--shm-dir", default="/dev/shm", help="where this node's NIC buckets live")
    args = p.parse_args(argv)
    EngineServer(args).serve(args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
