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

from dualkv.cluster.protocol import error_reply, pack, unpack
from dualkv.engine import (BlockBuffer, Decoder, LayerBlockCodec, Model, ModelConfig, PrefillItem,
                           SlotSource, StoreWriteBack, prefill_batch)
from dualkv.engine.remote import (RemoteBuffer, RemoteBufferSink, RemoteLayerSource,
                                  stream_hit_layers, wait_landed)
from dualkv.store import BlockStore, StoreConfig
from dualkv.transfer import Agent, TransferConfig


class EngineServer:
    def __init__(self, args):
        spec = json.loads(args.model)
        self.cfg = ModelConfig(**spec["config"])
        self.model = Model.from_seed(self.cfg, spec["seed"], args.device, spec["batch_invariant"])
        self.codec = LayerBlockCodec(self.cfg, args.block_tokens)
        layout = self.cfg.layout(args.block_tokens)
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
        self.timeout_s = args.timeout_s

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
        num_hit, handles = 0, []
        if msg["read_side"] == "de" and len(keys):
            source = SlotSource.load(self.store, keys, buffer.slots[:len(keys)])
            num_hit = source.prepare(time.monotonic() + self.timeout_s) // self.codec.block_tokens
            if num_hit:
                handles = stream_hit_layers(self.agent, buffer, self.pool_region, num_hit,
                                            msg["pe_peer"], msg["pe_recv_region"], msg["rid"])
        self.buffers[msg["rid"]] = (buffer, handles)
        target = RemoteBuffer.of(buffer, 0, self.pool_region)
        return {"slot_offsets": list(target.slot_offsets), "num_hit_blocks": num_hit}

    def op_prefill(self, msg):
        """PE: layerwise prefill, KV put into the DE buffer described in the message."""
        prompt = np.asarray(msg["prompt"], np.int32)
        if msg["read_side"] == "de":
            source = RemoteLayerSource(self.agent, self.recv, msg["num_hit_blocks"],
                                       self.store.layout, msg["rid"], msg["de_peer"])
        else:
            keys = np.frombuffer(msg["hit_keys"], np.uint8).reshape(-1, 32)
            source = SlotSource.load(self.store, keys)
        target = RemoteBuffer(msg["de_peer"], msg["de_region"], tuple(msg["slot_offsets"]))
        sink = RemoteBufferSink(self.agent, self.staging, self.staging_region, target,
                                self.codec, msg["rid"])
        try:
            item = PrefillItem(prompt, source, sink, msg["read_side"])
            first = prefill_batch(self.model, [item], self.codec, self.timeout_s)[0]
            num_cached = source.prepare(time.monotonic() + self.timeout_s) // self.codec.block_tokens
        finally:
            source.close()
        return {"first_token": first, "num_cached_blocks": num_cached}

    def op_decode(self, msg):
        """DE: wait for the prompt KV, decode, write every completed Full Block back."""
        buffer, handles = self.buffers.pop(msg["rid"])
        deadline = time.monotonic() + self.timeout_s
        for handle in handles:
            self.agent.wait(handle, max(0.0, deadline - time.monotonic()))
            self.agent.release(handle)
        wait_landed(self.agent, buffer, msg["rid"], deadline, msg["pe_peer"])
        cached = msg["num_cached_blocks"]
        prior = np.frombuffer(msg["prior_key"], np.uint8) if cached else None
        writeback = StoreWriteBack(self.store, self.codec, cached, prior)
        decoder = Decoder(self.model, self.codec, self.timeout_s)
        decoder.admit(msg["rid"], buffer, msg["prompt"], msg["first_token"], msg["max_new_tokens"],
                      num_cached_blocks=cached, writeback=writeback)
        done = {}
        while decoder.num_running:
            done.update(decoder.step())
        writeback.finish(self.timeout_s)
        return {"generated": done[msg["rid"]], "num_written_blocks": writeback.next_block}

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
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args(argv)
    EngineServer(args).serve(args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
