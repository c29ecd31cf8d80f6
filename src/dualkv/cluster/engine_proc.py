"""One engine process of the local cluster: a prefill (PE) or decode (DE) engine with its own
store handle on the shared block directory, its own `kv` transfer agent, and a REP socket.

Run as `python -m dualkv.cluster.engine_proc --role pe|de --endpoint ipc://... --root DIR
--model JSON`. Requests are served one at a time (a DE runs one request's decode per
request message; concurrent batching across messages is the next step).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import zmq

from dualkv.cluster.nic import ArrivesAt, SnicQueue
from dualkv.cluster.protocol import error_reply, pack, unpack
from dualkv.engine import (BlockBuffer, Decoder, EngineConfig, LayerBlockCodec, Model,
                           ModelConfig, PrefillItem, SlotSource, StoreWriteBack, prefill_basic,
                           prefill_batch)
from dualkv.engine.remote import (RemoteBuffer, RemoteBufferSink, RemoteLayerSource,
                                  stream_hit_layers, wait_landed)
from dualkv.store import BlockStore, StoreConfig
from dualkv.transfer import Agent, TransferConfig


class EngineServer:
    def __init__(self, args):
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
        self.staging = np.zeros(2 * max_tokens * layout.bytes_per_token_layer, np.uint8)
        self.recv = np.zeros(layout.num_layers * (max_tokens // layout.block_tokens + 1)
                             * layout.layer_block_bytes, np.uint8)
        self.staging_region = self.agent.register(self.staging)
        self.recv_region = self.agent.register(self.recv)
        self.buffers = {}  # DE: request id -> (BlockBuffer, stream handles)
        self.snic = SnicQueue(args.snic_mbps * 1e6)
        self.timeout_s = engine.timeout_s

    def op_hello(self, msg):
        return {"info": self.agent.local_info(), "pool_region": self.pool_region.id,
                "recv_region": self.recv_region.id}

    def op_connect(self, msg):
        return {"peer": self.agent.connect(msg["info"])}

    def op_open(self, msg):
        """DE: a buffer for the prompt; on the de read path, read the hit into it and start
        streaming it to the PE layer by layer."""
        keys = np.frombuffer(msg["hit_keys"], np.uint8).reshape(-1, 32)
        buffer = BlockBuffer(self.store.pool, self.store.layout, msg["num_tokens"])
        num_hit, handles, ready_at = 0, [], time.monotonic()
        if msg["read_side"] == "de" and len(keys):
            source = SlotSource.load(self.store, keys, buffer.slots[:len(keys)])
            num_hit = source.prepare(time.monotonic() + self.timeout_s) // self.codec.block_tokens
            ready_at = self.snic.reserve(len(keys) * self.store.layout.full_block_bytes)
            if num_hit:
                handles = stream_hit_layers(self.agent, buffer, self.pool_region, num_hit,
                                            msg["pe_peer"], msg["pe_recv_region"], msg["rid"],
                                            msg.get("pe_recv_offset", 0))
        self.buffers[msg["rid"]] = (buffer, handles)
        target = RemoteBuffer.of(buffer, 0, self.pool_region)
        return {"slot_offsets": list(target.slot_offsets), "num_hit_blocks": num_hit,
                "ready_at": ready_at}

    def op_drop(self, msg):
        """DE: frees the buffers of requests that will not be decoded (a failed batch)."""
        for buffer, handles in self.buffers.values():
            for handle in handles:  # puts to a PE that may be gone: settle, then free
                try:
                    self.agent.wait(handle, 5.0)
                except Exception:
                    pass
                self.agent.release(handle)
            buffer.free()
        num_dropped, self.buffers = len(self.buffers), {}
        return {"num_dropped": num_dropped}

    def op_prefill(self, msg):
        """PE: one layerwise forward over every request of the message (Basic: one request
        after another, whole hit loaded first), KV put into each request's DE buffer."""
        sources, items = [], []
        try:
            for req in msg["requests"]:
                sources.append(self._source(req))
                target = RemoteBuffer(req["de_peer"], req["de_region"], tuple(req["slot_offsets"]))
                part = self._staging_part(len(items), len(msg["requests"]))
                offset = part.ctypes.data - self.staging.ctypes.data
                sink = RemoteBufferSink(self.agent, part, self.staging_region, target, self.codec,
                                        req["rid"], region_offset=offset)
                items.append(PrefillItem(req["prompt"], sources[-1], sink, req["read_side"]))
            if msg.get("mode") == "basic":
                firsts = [prefill_basic(self.model, it.tokens, it.source, it.sink, self.codec,
                                        self.timeout_s) for it in items]
            else:
                firsts = prefill_batch(self.model, items, self.codec, self.timeout_s)
            deadline = time.monotonic() + self.timeout_s
            cached = [s.prepare(deadline) // self.codec.block_tokens for s in sources]
        finally:
            for source in sources:
                source.close()
        return {"results": [{"first_token": f, "num_cached_blocks": c}
                            for f, c in zip(firsts, cached)]}

    def _source(self, req):
        if req["read_side"] == "de":
            source = RemoteLayerSource(self.agent, self._recv_part(req), req["num_hit_blocks"],
                                       self.store.layout, req["rid"], req["de_peer"])
            return ArrivesAt(source, req["ready_at"])
        keys = np.frombuffer(req["hit_keys"], np.uint8).reshape(-1, 32)
        ready_at = self.snic.reserve(len(keys) * self.store.layout.full_block_bytes)
        return ArrivesAt(SlotSource.load(self.store, keys), ready_at)

    def op_stats(self, msg):
        return {"snic_bytes": self.snic.num_bytes}

    def _staging_part(self, index: int, count: int) -> np.ndarray:
        size = self.staging.nbytes // count
        return self.staging[index * size:(index + 1) * size]

    def _recv_part(self, req) -> np.ndarray:
        return self.recv[req.get("recv_offset", 0):]

    def op_decode(self, msg):
        """DE: wait for each request's prompt KV, decode them as one batch, write back."""
        decoder = Decoder(self.model, self.codec, self.timeout_s)
        writebacks = {}
        for req in msg["requests"]:
            rid = req["rid"]
            buffer, handles = self.buffers.pop(rid)
            deadline = time.monotonic() + self.timeout_s
            for handle in handles:
                self.agent.wait(handle, max(0.0, deadline - time.monotonic()))
                self.agent.release(handle)
            wait_landed(self.agent, buffer, rid, deadline, req["pe_peer"])
            cached = req["num_cached_blocks"]
            prior = np.frombuffer(req["prior_key"], np.uint8) if cached else None
            writebacks[rid] = StoreWriteBack(self.store, self.codec, cached, prior)
            decoder.admit(rid, buffer, req["prompt"], req["first_token"], req["max_new_tokens"],
                          num_cached_blocks=cached, writeback=writebacks[rid])
        done = {}
        while decoder.num_running:
            done.update(decoder.step())
        for wb in writebacks.values():
            wb.finish(self.timeout_s)
        return {"results": [{"rid": rid, "generated": done[rid],
                             "num_written_blocks": writebacks[rid].next_block}
                            for rid in writebacks]}

    def serve(self, endpoint: str) -> None:
        socket = zmq.Context.instance().socket(zmq.REP)
        socket.bind(endpoint)
        while True:
            msg = unpack(socket.recv())
            if msg["op"] == "stop":
                socket.send(pack({"ok": True}))
                break
            try:
                reply = {"ok": True, **getattr(self, f"op_{msg['op']}")(msg)}
            except Exception as exc:  # every failure goes back to the caller, typed
                reply = error_reply(exc)
            socket.send(pack(reply))
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
    p.add_argument("--snic-mbps", type=float, default=0.0,
                   help="emulated storage NIC of this node, MB/s (0: unlimited)")
    args = p.parse_args(argv)
    EngineServer(args).serve(args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
