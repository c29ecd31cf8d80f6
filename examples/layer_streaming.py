"""DualPath's storage -> DE -> PE read in miniature, in two processes.

The decode-side process (this one) holds a prompt's KV in its block store. It reads the
blocks from disk one layer at a time and puts each layer into the prefill-side process's
memory with a one-sided UCX put. A notice follows each layer's bytes. The prefill side
(a child process started below) waits for layer l's notice and can compute layer l at once,
while later layers are still being read and sent. That overlap is what lets a decode
node's storage bandwidth feed a prefill engine.

    python examples/layer_streaming.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from dualkv import KVLayout
from dualkv.transfer.rendezvous import RendezvousServer, rendezvous
from dualkv.store import BlockStore, StoreConfig
from dualkv.transfer import Agent, TransferConfig

LAYOUT = KVLayout.gqa(num_layers=8, num_kv_heads=2, head_dim=64, dtype="bf16")
REQUEST_ID = 7
TIMEOUT_S = 30.0


def expected_layer(block: int, layer: int) -> int:
    """The byte every position of Layer Block (block, layer) holds in this example."""
    return (block * 31 + layer) % 251


def decode_side(token: str) -> dict:
    prompt = np.random.default_rng(0).integers(0, 32000, 64 * 6, dtype=np.int32)
    with (tempfile.TemporaryDirectory(prefix="dualkv-example-") as root,
          BlockStore(StoreConfig(root, LAYOUT, model_id="example", pool_slots=16)) as store,
          Agent(TransferConfig(traffic_class="kv")) as agent):
        keys = store.chain_keys(prompt)
        slots = store.pool.alloc(len(keys))  # an earlier turn's KV, saved to disk
        for b, slot in enumerate(slots):
            for layer in range(LAYOUT.num_layers):
                store.pool.layer_view(slot, layer)[:] = expected_layer(b, layer)
        store.wait(store.store(keys, slots), timeout=TIMEOUT_S)
        store.pool.array()[slots] = 0  # forget it: the KV must come back from the files

        # The pool is the DE's staging memory: registered once, read into, sent from.
        pool = agent.register(ptr=store.pool.base_ptr, size=store.pool.size_bytes)
        server = RendezvousServer(agent, token)
        prefill = subprocess.Popen(
            [sys.executable, __file__, "--prefill", server.address, "--blocks", str(len(keys))],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, DUALKV_EXAMPLE_TOKEN=token))
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not server.peers:
                if time.monotonic() > deadline or prefill.poll() is not None:
                    raise RuntimeError("the prefill process did not join")
                time.sleep(0.01)
            pe = next(iter(server.peers.values()))

            hit = store.match(keys)  # a new turn: the longest stored prefix, in blocks
            loads = [store.load(keys[:hit], slots[:hit], layers=(layer, layer + 1))
                     for layer in range(LAYOUT.num_layers)]  # all queued at once
            lb = LAYOUT.layer_block_bytes
            for layer, handle in enumerate(loads):  # send layer l as soon as it is read
                assert store.wait(handle, timeout=TIMEOUT_S).all(), "a block failed its CRC"
                local = [store.pool.layer_ptr(s, layer) - store.pool.base_ptr for s in slots[:hit]]
                remote = [(b * LAYOUT.num_layers + layer) * lb for b in range(hit)]
                sent = agent.put(pe.id, pool, pe.region().id, local, remote, [lb] * hit,
                                 request_id=REQUEST_ID, layer=layer)
                agent.wait(sent, TIMEOUT_S)
                agent.release(sent)
            out, _ = prefill.communicate(timeout=TIMEOUT_S)
        finally:
            if prefill.poll() is None:
                prefill.kill()
            server.close()
        return dict(json.loads(out), blocks_sent=hit)


def prefill_side(address: str, num_blocks: int) -> dict:
    """Receives the layers into UCX-allocated memory (one-sided on this host)."""
    lb, num_layers = LAYOUT.layer_block_bytes, LAYOUT.num_layers
    with Agent(TransferConfig(traffic_class="kv")) as agent:
        _, kv = agent.alloc(num_blocks * num_layers * lb)
        de = rendezvous(agent, address, os.environ["DUALKV_EXAMPLE_TOKEN"], timeout=TIMEOUT_S)
        blocks = kv.reshape(num_blocks, num_layers, lb)
        arrived = []
        for layer in range(num_layers):
            agent.wait_notice(REQUEST_ID, layer, TIMEOUT_S, peer=de.id)
            arrived.append(time.monotonic())
            for b in range(num_blocks):  # here an engine would run layer `layer`'s attention
                if not (blocks[b, layer] == expected_layer(b, layer)).all():
                    return {"ok": False, "bad": [b, layer]}
        spread_ms = (arrived[-1] - arrived[0]) * 1e3
        return {"ok": True, "layers": num_layers, "notice_spread_ms": round(spread_ms, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prefill", metavar="ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--blocks", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.prefill:
        print(json.dumps(prefill_side(args.prefill, args.blocks)), flush=True)
        return 0
    result = decode_side(token=os.urandom(16).hex())
    print(f"prefill side received {result['blocks_sent']} blocks layer by layer "
          f"({result['layers']} layers, notices over {result['notice_spread_ms']} ms): "
          f"{'every byte as stored' if result['ok'] else 'WRONG BYTES at ' + str(result['bad'])}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
