"""The discrete-event loop (paper.md §16.2): submit -> fetch (PE, DE, side) -> storage read
-> layerwise prefill batches -> DE H2D -> analytic decode -> write-back -> next turn.

Decode is analytic per request: at HBM allocation the DE's load fixes TPOT, and the request
finishes (gen - 1) x TPOT after its H2D. Fetches happen on a global tick of
`fetch_period_s`, only for groups that can get work (a group sleeps while the queue is empty,
while all its PEs are above beta, or while its DE queue head does not fit), so an idle or
saturated cluster costs no events.
"""

import gc
from array import array
from collections import deque

import numpy as np

from dualkv.errors import InvalidArgument
from dualkv.sched import EngineReport, FetchResult, GroupReport, Request, Scheduler
from dualkv.sched.request import is_side, new_request
from dualkv.sim.cluster import Cluster, NodeSet
from dualkv.sim.config import SimConfig
from dualkv.sim.events import EventQueue, prefetch_int32, prefetch_items
from dualkv.sim.metrics import Accounting, Series, path_tokens, split_path_tokens
from dualkv.sim.workload import Workload

ARRIVE, TICK, READ_DONE, FORWARD_DONE, H2D_DONE, DECODE_DONE, MONITOR = range(7)
READ_PART_DONE = 7  # one node's part of a split read (the "split" policy)

# deque's methods, looked up once: compiled, _append(q, x) calls the method directly, where
# q.append(x) on an untyped q looks "append" up by name on every call (the loop's own queues
# are deques; a few such calls a turn)
_append, _popleft = deque.append, deque.popleft


def default_beta(cfg: SimConfig, work: Workload) -> float:
    """Prompt tokens one PE GPU prefills in 5 s at the workload's mean turn (paper.md §9)."""
    m = cfg.model
    hit, prompt = int(work.hit.mean()), int(work.prompt.mean())
    flops = m.attention(hit, prompt - hit) + m.linear_flops_per_token * (prompt - hit)
    return 5.0 * m.pe_flops_per_s / flops * prompt


def hbm_need(r: Request) -> int:
    """r.hbm_tokens, read as two fields: compiled, a property is a Python-level lookup, and the
    loop asks for it ~6 times a turn."""
    return r.prompt_tokens + r.gen_tokens


def read_node(r: Request) -> int:
    """r.read_node of a whole-request read, read as fields (a property is a Python-level
    lookup once compiled)."""
    return r.pe_node if is_side(r.read_side, "pe") else r.de_node


def part_tokens(node: int, r: Request) -> int:
    """Hit tokens `node` reads of a split request: the prefix on its PE node, the rest on its
    DE node."""
    return r.pe_read_tokens if node == r.pe_node else r.hit_tokens - r.pe_read_tokens


def _int64s(values) -> array:
    out = array("q")
    out.frombytes(np.ascontiguousarray(values, dtype=np.int64).view(np.uint8))  # one copy
    return out


def _int32s(values) -> array:
    out = array("i")  # C int: 32 bits on every platform numpy and Cython build for here
    out.frombytes(np.ascontiguousarray(values, dtype=np.int32).view(np.uint8))  # one copy
    return out


def check_shapes(work: Workload) -> None:
    """Request's shape checks for every turn at once (0 <= hit < prompt, gen >= 1), so each
    turn's Request is made without them (sched.request.new_request), and every number fits
    the int32 array the loop keeps them in."""
    limit = 2 ** 31 - 1
    bad = (work.hit < 0) | (work.hit >= work.prompt) | (work.gen < 1) | \
        (work.prompt > limit) | (work.gen > limit)
    if bad.any():
        i = int(bad.argmax())
        raise InvalidArgument(f"turn {i} of {work.name}: need 0 <= hit_tokens < prompt_tokens < 2**31 "
                              f"and 1 <= gen_tokens < 2**31, got {work.hit[i]}, {work.prompt[i]}, {work.gen[i]}")


class Simulator:
    def __init__(self, cfg: SimConfig, work: Workload, progress=None):
        check_shapes(work)
        self.cfg, self.work, self.progress = cfg, work, progress
        self.c = Cluster(cfg)
        self.policy = self.c.policy
        self.sched_cfg = cfg.scheduler_config(default_beta(cfg, work))
        self.sched = Scheduler(self.sched_cfg, self.c.pe_groups, self.c.de_groups)
        self.acct = Accounting(self.c.num_nodes, cfg.window_s)
        self.events, self.now = EventQueue(), 0.0
        n = self.c.num_nodes  # group ids are node ids: PE nodes, then DE nodes
        self.pe_awake, self.de_awake, self.pe_full = NodeSet(n), NodeSet(n), NodeSet(n)
        self.tick_armed, self._de_rotor = False, 0
        # "every PE group not in pe_full is awake", set when the global queue gets its first
        # request and applied at the next tick (on_tick says why that is the same set)
        self.pe_wake_all = False
        self.dirty_read_q = NodeSet(n)  # nodes whose read queue changed since the last tick
        self.num_ticks = 0
        n = work.num_agents
        # Per-agent and per-turn numbers as flat arrays ('q' int64, 'd' double), typed as C
        # memoryviews once compiled (simulator.pxd): a list of Python ints or floats costs a
        # cache miss on a separate object at each read, which dominated submit at 5 M turns.
        self.turn = _int64s(work.start[:-1])
        self.end = _int64s(work.start[1:])
        self.submit_t = array("d", [0.0]) * n
        self.first_t = array("d", [0.0]) * n
        self.finish_t = array("d", [0.0]) * n
        self.num_done = 0
        # per-turn figures (at most one per turn each) and, per forward, its time and the
        # max/avg attention time over the EP group's GPUs: columns of doubles (metrics.Series)
        turns = work.num_turns
        self.ttft, self.ttst, self.tpot, self.ttft_at = Series(turns), Series(turns), Series(turns), Series(turns)
        self.attn_t, self.attn_ratio = Series(), Series()
        self.bytes_read = 0
        # split reads whose buffers are reserved: request id -> parts still reading
        self.split_left = {}
        self.num_split = 0  # requests read as a split (both nodes)
        # each turn's (prompt, hit, gen) side by side: a submit reads one cache line, not three
        # (at 5 M turns, each a miss: consecutive submits are different agents' turns), as
        # int32 (check_shapes: every shape fits), so an agent's consecutive turns share a line
        # 5 turns in 6 instead of 5 in 8
        self._shape = _int32s(np.stack([work.prompt, work.hit, work.gen], axis=1).ravel())
        m = cfg.model
        self.bpt = m.bytes_per_token
        self.kv_bw = cfg.cnic_bytes_per_s * cfg.cnic_kv_share
        self.read_s_per_token = 1.0 / m.snic_tokens_per_s
        self.linear_s_per_token = m.linear_flops_per_token / m.pe_flops_per_s / cfg.gpus_per_node
        self.forward_fixed_s = m.pe_forward_fixed_s  # per forward, whatever its batch
        self.tpot_slope = m.tpot_full_s - m.tpot_light_s
        self.tpot_light = m.tpot_light_s
        self.io_free, self.layerwise = self.policy.is_io_free, self.policy.is_layerwise
        self.may_split = is_side(self.policy.side, "split")  # a request may read on both nodes
        self.block = cfg.block_tokens
        self.period = cfg.fetch_period_s
        # One report per engine and per group, refilled before each fetch: the scheduler uses
        # a report only during the fetch it is passed to, so reuse saves allocations only.
        engine_reports = [EngineReport(e, 0, 0) for e in range(len(self.c.seq))]
        self.group_reports = [GroupReport(s.group_id, 0, [engine_reports[e] for e in s.engine_ids])
                              for s in (*self.c.pe_groups, *self.c.de_groups)]
        self.fetched = FetchResult()  # refilled by every fetch, read before the next

    # -- the loop ---------------------------------------------------------------------------
    def push(self, t: float, kind: int, obj) -> None:
        self.events.push(t, kind, obj)

    def run(self, until: float = float("inf"), monitor=None, monitor_period: float = 150.0):
        for a, t in enumerate(self.work.arrival_s.tolist()):
            self.push(t, ARRIVE, a)
        if monitor is not None:
            self.push(monitor_period, MONITOR, monitor_period)
        # The loop allocates millions of short-lived, acyclic objects; the cyclic collector's
        # passes over them would find nothing, so it is paused for the run.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._loop(until, monitor)
        finally:
            if gc_was_enabled:
                gc.enable()
        return self

    def _loop(self, until: float, monitor) -> None:
        events = self.events
        num_agents = self.work.num_agents
        while len(events):
            obj = events.pop_payload()
            t, kind = events.last_t, events.last_kind
            if t > until:
                break
            self.now = t
            # an if-chain rather than a table of bound methods: compiled, it is a C switch
            if kind == DECODE_DONE:
                self.on_decode_done(obj)
            elif kind == READ_DONE:
                self.on_read_done(obj)
            elif kind == FORWARD_DONE:
                self.on_forward_done(obj)
            elif kind == H2D_DONE:
                self.on_h2d_done(obj)
            elif kind == TICK:
                self.on_tick(obj)
            elif kind == ARRIVE:
                self.on_arrive(obj)
            elif kind == READ_PART_DONE:
                self.on_read_part_done(obj)
            else:  # MONITOR
                if monitor(self, t) or self.num_done == num_agents:
                    break
                self.push(t + obj, MONITOR, obj)

    # -- arrivals and fetches ---------------------------------------------------------------
    def on_arrive(self, agent: int) -> None:
        self.submit(agent)

    def submit(self, agent: int, done: Request = None) -> None:
        """The agent's next turn. `done`: its previous turn's Request, finished (decoded,
        nothing holds it for later), refilled for this turn instead of making a new one."""
        i = self.turn[agent]
        self.submit_t[agent] = self.now
        # _shape indexed in place (compiled, a memoryview local costs an atomic reference
        # count and a zeroed temporary per call). The agent goes in the request's C field
        # `slot`, not in `tag`: reading an int object back is a cache miss at 48,000 agents.
        if done is None:
            request = new_request(i, self._shape[3 * i], self._shape[3 * i + 1],
                                  self._shape[3 * i + 2], None, agent)
        else:
            # every field as new_request sets it; the object is in cache (its decode just
            # finished) and nothing is freed or allocated, where a new one would cost a cache
            # miss at its first use and GC (un)tracking
            request = done
            request._fill(i, self._shape[3 * i], self._shape[3 * i + 1], self._shape[3 * i + 2], None)
            request.slot = agent
        routed = self.sched.submit(request)
        if routed is None:
            if len(self.sched.pe_queue) == 1 and len(self.pe_full) < self.c.num_pe_nodes:
                self.pe_wake_all = True  # every PE group not in pe_full: see on_tick
            if len(self.sched.de_queue) == 1:  # some DE leader must drain it (phase 1)
                self._de_rotor = (self._de_rotor + 1) % self.c.num_de_nodes
                self.de_awake.add(self.c.num_pe_nodes + self._de_rotor)
        else:
            self.pe_awake.add(routed[0])
            self.de_awake.add(routed[1])
        self.arm_tick()

    def arm_tick(self) -> None:
        if not self.tick_armed and (self.pe_awake.size or self.de_awake.size or self.pe_wake_all):
            period = self.period
            self.push((int(self.now / period) + 1) * period, TICK, None)
            self.tick_armed = True

    def on_tick(self, _) -> None:
        self.tick_armed = False
        for node in self.dirty_read_q.take(0):  # every leader reports each period
            self.sched.report_read_q(node, self.c.read_q[node])
        self.num_ticks += 1  # leaders fetch at different phases: rotate who goes first
        if self.pe_wake_all:
            # The groups not in pe_full when the queue got its first request, taken now: the
            # same set, since only a fetch (in a tick) adds to pe_full, and a group leaving it
            # (on_forward_done) while the queue is non-empty is added to pe_awake anyway.
            self.pe_wake_all = False
            for g in range(self.c.num_pe_nodes):
                if not self.pe_full.contains(g):
                    self.pe_awake.add(g)
        # take() empties the set first: groups woken during the fetches wait for the next tick
        # A PE fetch with nothing to take returns nothing and changes nothing (read queues
        # are reported above), so it is skipped: the same decisions, fewer calls. DE leaders
        # always report: their load refreshes the group's phase-1 total (fetch_de).
        sched = self.sched
        for g in self.pe_awake.take(self.num_ticks):
            if sched.has_pe_work(g):
                self.fetch_pe(g)
        for g in self.de_awake.take(self.num_ticks):
            self.fetch_de(g)
        self.arm_tick()

    def fetch_pe(self, g: int) -> None:
        c = self.c
        report = self.group_reports[g]
        report.read_q = c.read_q[g]
        for er in report.engines:
            e = er.engine_id
            er.seq, er.tok = c.seq[e], c.tok[e]
        result = self.sched.fetch_for_pe_group(report, self.fetched)
        for r in result.assigned:
            c.seq[r.pe] += 1
            c.tok[r.pe] += r.prompt_tokens
            c.node_tok[r.pe_node] += r.prompt_tokens
        for r in result.placed:
            self.place(r)
        if self.sched.has_pe_work(g):  # Algorithm 1 stopped: every engine is above beta
            self.pe_full.add(g)

    def fetch_de(self, g: int) -> None:
        c = self.c
        if not self.sched.has_de_work(g):
            # About half the DE fetches find no work (another leader drained the global queue
            # into other groups first). Such a fetch only reports the group's load, so only
            # that is sent, as the group's token total (report_de_tokens, what report_de_load
            # sums): the same decisions, without a report or the fetch's result objects.
            self.sched.report_de_tokens(g, c.read_q[g], c.node_tok[g])
            self.arm_tick()
            return
        cap = c.de_cap
        # an engine reports the HBM it has free now; requests assigned but not yet decoding
        # are not reserved (the paper's Z rule is what keeps them from overflowing it)
        report = self.group_reports[g]
        report.read_q = c.read_q[g]
        for er in report.engines:
            e = er.engine_id
            er.seq, er.tok, er.free_hbm_tokens = c.seq[e], c.tok[e], cap - c.de_alloc[e]
        result = self.sched.fetch_for_de_group(report, self.fetched)
        for r in result.assigned:
            c.seq[r.de] += 1
            c.tok[r.de] += r.prompt_tokens
            c.node_tok[r.de_node] += r.prompt_tokens
            c.de_assigned[r.de] += hbm_need(r)
        for r in result.placed:
            self.place(r)
        for woken in result.woken_groups:
            self.de_awake.add(woken)
        self.arm_tick()

    # -- storage reads ----------------------------------------------------------------------
    def place(self, r: Request) -> None:
        if self.io_free:
            self.make_ready(r)
            return
        if self.may_split and is_side(r.read_side, "split"):
            self.place_split(r)
            return
        node = read_node(r)
        self.c.read_q[node] += r.hit_tokens
        _append(self.c.snic_pending[node], r)
        self.start_reads(node)

    def start_reads(self, node: int) -> None:
        c = self.c
        pending = c.snic_pending[node]
        while pending and not c.snic_busy[node]:
            r = pending[0]
            if self.may_split and is_side(r.read_side, "split"):
                if r.rid not in self.split_left and not self.reserve_split(node, r):
                    return  # its buffers are full: blocked, as a whole read would be
                _popleft(pending)
                self.start_read_part(node, r)
                continue
            on_pe = is_side(r.read_side, "pe")
            if on_pe and not c.buffer_fits(r.pe_node, r.hit_tokens):
                c.block(r.pe_node, node)
                return
            if not c.buffer_fits(r.de_node, r.prompt_tokens):
                c.block(r.de_node, node)
                return
            _popleft(pending)
            if on_pe:
                c.buf_used[r.pe_node] += r.hit_tokens
            c.buf_used[r.de_node] += r.prompt_tokens
            if r.hit_tokens == 0:
                self.make_ready(r)
                continue
            end = self.now + r.hit_tokens * self.read_s_per_token
            c.snic_busy[node] = True
            self.acct.add_read(node, self.now, end, r.hit_tokens)
            self.push(end, READ_DONE, r)

    def on_read_done(self, r: Request) -> None:
        node = read_node(r)
        self.c.snic_busy[node] = False
        self.c.read_q[node] -= r.hit_tokens
        self.dirty_read_q.add(node)
        self.bytes_read += r.hit_tokens * self.bpt
        self.make_ready(r)
        self.start_reads(node)

    # -- split reads: the PE node reads the hit's prefix, the DE node the rest, at once ----
    def place_split(self, r: Request) -> None:
        c = self.c
        self.num_split += 1
        c.read_q[r.pe_node] += r.pe_read_tokens
        c.read_q[r.de_node] += r.hit_tokens - r.pe_read_tokens
        c.snic_pending[r.pe_node].append(r)
        c.snic_pending[r.de_node].append(r)
        self.start_reads(r.pe_node)
        self.start_reads(r.de_node)

    def reserve_split(self, node: int, r: Request) -> bool:
        """The first part of a split read to reach the head of its NIC's queue reserves both
        buffers, as a whole-request PE-side read does (PE: its part, DE: the prompt), so a
        request never holds one buffer while it waits for the other; False when they are
        full. The other part then moves to the head of its own queue: it needs no buffer, and
        left behind a head that waits for buffers which this request holds, it would wait
        forever (a deadlock tests/sim/test_split_sim.py reproduces with small buffers)."""
        c = self.c
        if not c.buffer_fits(r.pe_node, r.pe_read_tokens):
            c.block(r.pe_node, node)
            return False
        if not c.buffer_fits(r.de_node, r.prompt_tokens):
            c.block(r.de_node, node)
            return False
        c.buf_used[r.pe_node] += r.pe_read_tokens
        c.buf_used[r.de_node] += r.prompt_tokens
        self.split_left[r.rid] = 2
        other = r.de_node if node == r.pe_node else r.pe_node
        queue = c.snic_pending[other]
        queue.remove(r)
        queue.appendleft(r)
        return True

    def start_read_part(self, node: int, r: Request) -> None:
        """Start `node`'s part of a split read (its buffers are reserved), then the other
        part if that node's NIC is idle."""
        c = self.c
        tokens = part_tokens(node, r)
        end = self.now + tokens * self.read_s_per_token
        c.snic_busy[node] = True
        self.acct.add_read(node, self.now, end, tokens)
        self.push(end, READ_PART_DONE, (node, r))
        other = r.de_node if node == r.pe_node else r.pe_node
        if not c.snic_busy[other]:
            self.start_reads(other)

    def on_read_part_done(self, item) -> None:
        node, r = item
        tokens = part_tokens(node, r)
        self.c.snic_busy[node] = False
        self.c.read_q[node] -= tokens
        self.dirty_read_q.add(node)
        self.bytes_read += tokens * self.bpt
        left = self.split_left[r.rid] - 1
        if left:
            self.split_left[r.rid] = left
        else:  # both parts are in: the PE can compute
            del self.split_left[r.rid]
            self.make_ready(r)
        self.start_reads(node)

    def release_buffer(self, node: int, tokens: int) -> None:
        self.c.buf_used[node] -= tokens
        blocked = self.c.blocked[node]
        if blocked.size:  # take() empties it first: a read node blocked again waits anew
            for read_node in blocked.take(0):
                self.start_reads(read_node)

    # -- prefill ----------------------------------------------------------------------------
    def make_ready(self, r: Request) -> None:
        c = self.c
        _append(c.ready[r.pe], r)
        if not c.pe_busy[r.pe_node]:
            self.start_forward(r.pe_node)

    def start_forward(self, g: int) -> None:
        # Layerwise transfers overlap compute: their CNIC bytes are accounted (metrics.py),
        # not queued, as paper.md §16.1 allows inside the §6 bound.
        c, kv_bw = self.c, self.kv_bw
        io = not self.io_free and not self.layerwise
        # done: the requests whose prefill this forward finishes, in batch order (what the
        # FORWARD_DONE event needs; its chunks are not kept past this call)
        done, gpu_times, new_tokens, num_chunks = [], [], 0, 0
        for e in c.pe_groups[g].engine_ids:
            if not c.ready[e]:
                gpu_times.append(0.0)
                continue
            batcher = c.batchers[e]
            chunks, flops = batcher.next_batch(c.ready[e])
            t = c.curve.seconds_for(flops)  # what c.curve(flops) returns, as a C call
            if io:  # no layerwise prefill: whole-KV load before and store after the forward
                loaded = stored = 0
                for ch in chunks:
                    loaded += ch.cached
                    stored += ch.bsz
                    if is_side(ch.request.read_side, "pe") and ch.cached == ch.request.hit_tokens:
                        stored += ch.cached
                t += loaded * self.bpt / kv_bw + stored * self.bpt / kv_bw
            gpu_times.append(t)
            for ch in chunks:
                new_tokens += ch.bsz
                if ch.is_last:
                    done.append(ch.request)
            num_chunks += len(chunks)
        if not num_chunks:
            return
        longest = max(gpu_times)
        self.attn_t.append(self.now)
        self.attn_ratio.append(longest * len(gpu_times) / sum(gpu_times))
        c.pe_busy[g] = True
        # A forward's time: the slowest GPU's attention (and, without layerwise prefill, its
        # load/store), the group's linear work spread over its GPUs, and the fixed per-forward
        # term (paper.md §16.1) that makes throughput grow with batch size (Fig. 3 right).
        end = self.now + longest + new_tokens * self.linear_s_per_token + self.forward_fixed_s
        self.push(end, FORWARD_DONE, (g, done))

    def on_forward_done(self, item) -> None:
        g, done = item
        c = self.c
        c.pe_busy[g] = False
        # At 48,000 agents these requests have left the cache since the forward started:
        # their loads are started together here instead of one miss after another below.
        prefetch_items(done)
        for r in done:
            self.prefill_done(r)
        self.pe_full.discard(g)
        if self.sched.has_pe_work(g):
            self.pe_awake.add(g)
            self.arm_tick()
        self.start_forward(g)

    def prefill_done(self, r: Request) -> None:
        c, a = self.c, r.slot
        self.first_t[a] = self.now
        self.ttft.append(self.now - self.submit_t[a])
        self.ttft_at.append(self.submit_t[a])
        c.seq[r.pe] -= 1
        c.tok[r.pe] -= r.prompt_tokens
        c.node_tok[r.pe_node] -= r.prompt_tokens
        if not self.io_free:
            miss = r.prompt_tokens - r.hit_tokens  # r.miss_tokens, read as fields
            if self.may_split and is_side(r.read_side, "split"):
                self.acct.add_class(self.now, split_path_tokens(
                    r.pe_read_tokens, r.hit_tokens - r.pe_read_tokens, miss))
                self.release_buffer(r.pe_node, r.pe_read_tokens)
            else:
                self.acct.add_class(self.now, path_tokens(r.read_side, r.hit_tokens, miss))
            if is_side(r.read_side, "pe"):
                self.release_buffer(r.pe_node, r.hit_tokens)
        if c.de_waiting[r.de] or (c.de_alloc[r.de] and c.de_alloc[r.de] + hbm_need(r) > c.de_cap):
            _append(c.de_wait[r.de], r)
            c.de_waiting[r.de] += 1
        else:
            self.allocate(r)

    # -- decode -----------------------------------------------------------------------------
    def allocate(self, r: Request) -> None:
        c, e = self.c, r.de
        c.de_alloc[e] += hbm_need(r)
        tpot = self.tpot_light + self.tpot_slope * min(1.0, c.de_alloc[e] / c.de_cap)
        end = self.now
        if not self.io_free:
            end = max(self.now, c.h2d_free[e]) + r.prompt_tokens * self.bpt / self.kv_bw
            c.h2d_free[e] = end
            self.push(end, H2D_DONE, r)
        if r.gen_tokens > 1:
            self.ttst.append(end + tpot - self.first_t[r.slot])
            self.tpot.append(tpot)
        self.push(end + (r.gen_tokens - 1) * tpot, DECODE_DONE, r)

    def on_h2d_done(self, r: Request) -> None:
        self.release_buffer(r.de_node, r.prompt_tokens)

    def on_decode_done(self, r: Request) -> None:
        c, e, a = self.c, r.de, r.slot
        if self.turn[a] + 1 < self.end[a]:
            # the agent's next turn's shape, read by submit below: a cache miss at 48,000
            # agents (consecutive submits are different agents'), started now to overlap
            # with the work in between
            prefetch_int32(self._shape, 3 * (self.turn[a] + 1))
        c.de_alloc[e] -= hbm_need(r)
        c.de_assigned[e] -= hbm_need(r)
        c.seq[e] -= 1
        c.tok[e] -= r.prompt_tokens
        c.node_tok[r.de_node] -= r.prompt_tokens
        if not self.io_free:
            block = self.block
            written = (r.prompt_tokens + r.gen_tokens) // block * block - r.hit_tokens
            self.acct.add_write(r.de_node, written)
            self.acct.add_class(self.now, (0, 0, written, 0, 0, 2 * written))
        while c.de_waiting[e] and (not c.de_alloc[e] or
                                   c.de_alloc[e] + hbm_need(c.de_wait[e][0]) <= c.de_cap):
            c.de_waiting[e] -= 1
            self.allocate(_popleft(c.de_wait[e]))
        if self.sched.has_de_work(r.de_node):
            self.de_awake.add(r.de_node)
            self.arm_tick()
        self.turn[a] += 1
        if self.turn[a] < self.end[a]:
            # r is finished: no event, queue or scheduler state refers to it any more (its H2D
            # event, pushed first at the same or an earlier time, has run); the fetch result
            # lists that may still list it are cleared before they are read again
            self.submit(a, r)
        else:
            self.finish_t[a] = self.now
            self.num_done += 1
            if self.progress is not None:
                self.progress(1)
