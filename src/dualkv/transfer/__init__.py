"""Moving bytes between engines: UCX agents, rendezvous, and the node's traffic manager.

    agent.py         Agent, TransferConfig, Region: one-sided put/get of Layer Blocks + notices
    rendezvous.py    RendezvousServer / rendezvous: token-guarded joining of peers (ZeroMQ)
    session.py       the rendezvous's session keys and sealed boxes (stdlib HMAC-SHA256)
    traffic.py       TrafficManager: kv work chunked behind model work; NIC token buckets
    traffic_cuda.py  host <-> device copies through the traffic manager's classes

`from dualkv.transfer import Agent, TransferConfig` is the usual entry; see docs/transfer-api.md.
The rendezvous and the traffic manager are imported from their modules (they pull in ZeroMQ
and the traffic classes only where used).
"""
from dualkv.transfer.agent import (TRAFFIC_CLASSES, Agent, Region, TransferConfig, as_int64,
                                   buffer_address)

__all__ = ["Agent", "Region", "TransferConfig", "TRAFFIC_CLASSES", "as_int64", "buffer_address"]
