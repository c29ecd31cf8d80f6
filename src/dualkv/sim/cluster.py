"""The simulated cluster's state: nodes (storage NIC, host buffer), PE GPUs (ready queue,
batcher) and DE GPUs (HBM, H2D queue). Flat arrays indexed by node or engine id, because the
event loop touches them millions of times: numbers live in array.array ('q' int64, 'd'
double, 'b' flags), which cluster.pxd types as C memoryviews once compiled, and which behave
like lists of numbers where it is not."""
from __future__ import annotations

from array import array
from collections import deque

from dualkv.sched import FlopCurve, GroupSpec, PrefillBatcher, get_policy
from dualkv.sim.config import SimConfig


class Cluster:
    def __init__(self, cfg: SimConfig):
        m, g = cfg.model, cfg.gpus_per_node
        self.policy = get_policy(cfg.policy)
        self.num_pe_nodes, self.num_de_nodes, self.g = cfg.num_pe_nodes, cfg.num_de_nodes, g
        num_nodes = cfg.num_pe_nodes + cfg.num_de_nodes
        self.num_nodes = num_nodes
        self.pe_groups = [GroupSpec(n, n, tuple(range(n * g, (n + 1) * g))) for n in range(cfg.num_pe_nodes)]
        self.de_groups = [GroupSpec(n, n, tuple(range(n * g, (n + 1) * g)))
                          for n in range(cfg.num_pe_nodes, num_nodes)]
        num_engines = num_nodes * g
        # every engine
        self.seq = array("q", [0]) * num_engines
        self.tok = array("q", [0]) * num_engines
        self.node_tok = array("q", [0]) * num_nodes  # tok summed over each node's engines
        # nodes: storage NIC FIFO and host buffer (tokens)
        self.read_q = array("q", [0]) * num_nodes
        self.snic_pending = [deque() for _ in range(num_nodes)]
        self.snic_busy = array("b", [0]) * num_nodes
        self.buf_used = array("q", [0]) * num_nodes
        self.buf_cap = int(m.dram_bytes_per_node / m.bytes_per_token)
        # per buffer node: the read nodes whose queue head waits for room in its buffer
        self.blocked = [NodeSet(num_nodes) for _ in range(num_nodes)]
        # PE GPUs
        self.curve = FlopCurve.linear(m.pe_flops_per_s)
        cap = None if self.policy.is_layerwise else m.pe_hbm_tokens
        self.batchers = [PrefillBatcher(m.attention, self.curve, cfg.compute_quota_s, cap)
                         for _ in range(num_engines)]
        self.ready = [deque() for _ in range(num_engines)]
        self.pe_busy = array("b", [0]) * num_nodes
        # DE GPUs
        self.de_cap = m.de_hbm_tokens
        self.de_assigned = array("q", [0]) * num_engines  # HBM tokens of assigned, unfinished requests
        self.de_alloc = array("q", [0]) * num_engines  # HBM tokens allocated (decoding)
        self.de_wait = [deque() for _ in range(num_engines)]
        # len(de_wait[e]), kept beside it: the loop asks whether an engine has waiters twice a
        # turn, and a C array read is cheaper than reaching the deque (a cache miss at scale)
        self.de_waiting = array("q", [0]) * num_engines
        self.h2d_free = array("d", [0.0]) * num_engines

    def buffer_fits(self, node: int, tokens: int) -> bool:
        used = self.buf_used[node]
        return used == 0 or used + tokens <= self.buf_cap  # one oversized request still runs

    def block(self, buffer_node: int, read_node: int) -> None:
        """`read_node`'s queue head waits for room in `buffer_node`'s buffer (this runs at every
        failed start while the buffers are full: a flag store)."""
        waiting = self.blocked[buffer_node]
        waiting.add(read_node)


class NodeSet:
    """A set of node ids in [0, n) as a flag array: add and discard are C stores once compiled
    (cluster.pxd), no hashing or boxing; take() hands the members out in id order, rotated,
    and empties the set (the loop's awake groups and changed read queues, once per tick)."""

    def __init__(self, n: int):
        self.flags = array("b", [0]) * n
        self.size = 0
        self.lo, self.hi = n, -1  # every member lies in [lo, hi]: take() scans only that

    def __len__(self) -> int:
        return self.size

    def contains(self, i: int) -> bool:
        return self.flags[i] != 0

    def add(self, i: int) -> None:
        if not self.flags[i]:
            self.flags[i] = 1
            self.size += 1
            self.lo, self.hi = min(self.lo, i), max(self.hi, i)

    def discard(self, i: int) -> None:
        if self.flags[i]:
            self.flags[i] = 0
            self.size -= 1

    def take(self, shift: int) -> list:
        """The members in increasing id order, starting at the (shift mod size)-th (the tick
        rotates which group fetches first); the set is empty afterwards."""
        members = []
        if self.size == 0:
            return members
        for i in range(self.lo, self.hi + 1):
            if self.flags[i]:
                self.flags[i] = 0
                members.append(i)
        self.size = 0
        self.lo, self.hi = len(self.flags), -1
        k = shift % len(members)
        return members[k:] + members[:k] if k else members
