"""A second engine process for the transfer tests: one kv agent, one registered buffer of
seeded random bytes, a rendezvous server; commands arrive as JSON lines on stdin and each
answer is one JSON line on stdout. Also runs standalone as a checking client (netns test)."""
import argparse
import json
import sys

import numpy as np

from dualkv.transfer.rendezvous import RendezvousServer, rendezvous
from dualkv.transfer import Agent, TransferConfig


def seeded_bytes(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def make_agent(args) -> Agent:
    return Agent(TransferConfig(tls=args.tls, op_timeout_s=args.op_timeout,
                                keepalive_interval_s=args.keepalive))


def reply(obj):
    print(json.dumps(obj), flush=True)


def serve(args):
    agent = make_agent(args)
    buf = seeded_bytes(args.seed, args.size)
    region = agent.register(buf)
    server = RendezvousServer(agent, args.token, args.bind)
    reply({"address": server.address, "uid": agent.uid, "region": region.id})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply(run_command(agent, server, buf, cmd))
        except Exception as exc:  # noqa: BLE001 - the test reads the error type
            reply({"error": type(exc).__name__, "message": str(exc)})
    server.close()
    agent.close()


def run_command(agent, server, buf, cmd):
    op = cmd["op"]
    if op == "dump":
        buf.tofile(cmd["path"])
        return {"ok": True}
    if op == "wait_notices":
        for layer in range(cmd["num_layers"]):
            agent.wait_notice(cmd["request_id"], layer, cmd["wait_s"])
        return {"order": agent.notices(cmd["request_id"]).tolist()}
    if op == "stream":  # put layers to the first peer that joined, until killed
        peer = next(iter(server.peers.values()))
        remote = peer.region()
        n = cmd["block_bytes"]
        for layer in range(cmd["num_layers"]):
            h = agent.put(peer, agent.regions()[0].id, remote.id, [0], [(layer % 4) * n], [n],
                          request_id=cmd["request_id"], layer=layer)
            agent.wait(h, 10.0)
            agent.release(h)
        return {"ok": True}
    raise ValueError(f"unknown op {op}")


def check_client(args):
    """Joins a server, puts blocks, gets them back and gets the server's seeded bytes."""
    agent = make_agent(args)
    local = np.zeros(args.size, dtype=np.uint8)
    region = agent.register(local)
    peer = rendezvous(agent, args.connect, args.token, timeout=10)
    n = args.size // 4
    local[:n] = seeded_bytes(args.seed + 1, n)
    h = agent.put(peer, region, peer.region().id, [0], [n], [n], request_id=1, layer=0)
    agent.wait(h, 10)
    h = agent.get(peer, region, peer.region().id, [n, 2 * n], [n, 0], [n, n])
    agent.wait(h, 10)
    expect = seeded_bytes(args.seed, args.size)
    ok = (np.array_equal(local[n:2 * n], local[:n])
          and np.array_equal(local[2 * n:3 * n], expect[:n]))
    reply({"ok": bool(ok)})
    agent.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--token", default="secret")
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--connect")
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tls")
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--keepalive", type=float, default=0.5)
    a = p.parse_args()
    check_client(a) if a.connect else serve(a)
