"""The global scheduler: one FIFO queue, PE and DE choice on group fetches, the read side.

An event loop (the simulator, or a real engine cluster) owns time. It calls `submit` when a
request arrives, and `fetch_for_pe_group` / `fetch_for_de_group` when a group leader fetches,
passing the group's load report. Requests come back in `FetchResult.placed` once their PE, DE
and read side are all chosen; the caller then starts the read on the chosen node.
"""
from __future__ import annotations

from array import array
from collections import deque
from typing import Sequence

from dualkv.errors import InvalidArgument
from dualkv.sched.config import SchedulerConfig
from dualkv.sched.request import FetchResult, GroupReport, GroupSpec, Request, is_side
from dualkv.sched.select import LeastLoaded, assign_des, assign_pes, shorter_queue_side
from dualkv.sched.split import split_read, split_side


# deque's methods, looked up once: compiled, _append(q, x) calls the method directly, where
# q.append(x) on an untyped q looks "append" up by name on every call (the scheduler's own
# queues are deques)
_append = deque.append


def _cleared(result: FetchResult | None) -> FetchResult:
    """A new FetchResult, or `result` emptied for reuse."""
    if result is None:
        return FetchResult()
    if result.assigned:
        del result.assigned[:]
    if result.placed:
        del result.placed[:]
    if result.woken_groups:
        del result.woken_groups[:]
    return result


class Scheduler:
    def __init__(self, config: SchedulerConfig, pe_groups: Sequence[GroupSpec],
                 de_groups: Sequence[GroupSpec]):
        if not pe_groups or not de_groups:
            raise InvalidArgument("a scheduler needs at least one PE group and one DE group")
        self.config = config
        self.policy = config.policy_spec
        # the policy's switches and thresholds as plain fields: read on every call
        self._smart, self._io_free = self.policy.is_smart, self.policy.is_io_free
        self._side = self.policy.side
        # the read-side rule as flags, tested per request instead of comparing strings
        self._side_pe = is_side(self._side, "pe") or self._io_free
        self._side_rr, self._side_split = is_side(self._side, "rr"), is_side(self._side, "split")
        self._alpha, self._beta = config.alpha_tokens, config.beta_tokens
        self._z = config.z_margin
        self._split_block = config.split_block_tokens
        self.pe_groups = {g.group_id: g for g in pe_groups}
        self.de_groups = {g.group_id: g for g in de_groups}
        if len(self.pe_groups) + len(self.de_groups) != len(pe_groups) + len(de_groups) or \
                set(self.pe_groups) & set(self.de_groups):
            raise InvalidArgument("group ids must be unique across PE and DE groups")
        self.read_q = {g.node_id: 0 for g in (*pe_groups, *de_groups)}
        # each group's node, read on every fetch: a dict of ints (a GroupSpec is a dataclass,
        # whose field reads are instance-dict lookups)
        self._pe_node = {g.group_id: g.node_id for g in pe_groups}
        self._de_node = {g.group_id: g.node_id for g in de_groups}
        self.pe_queue: deque[Request] = deque()  # global FIFO, waiting for a PE
        self.de_queue: deque[Request] = deque()  # waiting for phase 1 (a DE group)
        self.de_private = {gid: deque() for gid in self.de_groups}
        self.de_loads = LeastLoaded(self.de_groups)  # reported tokens + private queue
        # phase 1 works by position in de_loads.ids: the same private queues as a list, and
        # each one's prompt tokens (int64; C arrays once compiled, inter.pxd)
        self._private_at = [self.de_private[gid] for gid in self.de_loads.ids]
        self._private_tokens = array("q", [0]) * len(self.de_loads.ids)
        self._rr_pe = [(g.group_id, e) for g in pe_groups for e in g.engine_ids]
        self._rr_de = [(g.group_id, e) for g in de_groups for e in g.engine_ids]
        self._rr_counts = [0, 0, 0]  # next PE, next DE, next read side
        self._pending_pe = {gid: deque() for gid in self.pe_groups}  # round robin: chosen, not fetched
        self._pending_de = {gid: deque() for gid in self.de_groups}

    # -- arrivals -------------------------------------------------------------------------
    def submit(self, request: Request) -> tuple[int, int] | None:
        """Queue a request. Round-robin policies choose its engines now and return the
        (PE group, DE group) whose next fetch hands it over; smart policies choose at fetch
        time and return None (any group may take it)."""
        if self._smart:
            _append(self.pe_queue, request)
            _append(self.de_queue, request)
            return None
        gid, engine_id = self._rr_pe[self._rr_counts[0] % len(self._rr_pe)]
        self._pending_pe[gid].append((request, engine_id))
        self._rr_counts[0] += 1
        gid, engine_id = self._rr_de[self._rr_counts[1] % len(self._rr_de)]
        self._pending_de[gid].append((request, engine_id))
        self._rr_counts[1] += 1
        return self._rr_pe[(self._rr_counts[0] - 1) % len(self._rr_pe)][0], gid

    @property
    def num_waiting(self) -> int:
        """Requests still waiting for a PE."""
        return len(self.pe_queue) + sum(len(q) for q in self._pending_pe.values())

    def has_pe_work(self, group_id: int) -> bool:
        return bool(self.pe_queue) if self._smart else bool(self._pending_pe[group_id])

    def has_de_work(self, group_id: int) -> bool:
        if self._smart:
            return bool(self.de_queue) or bool(self.de_private[group_id])
        return bool(self._pending_de[group_id])

    def report_read_q(self, node_id: int, read_q: int) -> None:
        """A read-queue report without a fetch: leaders report every fetch period even when
        their group has nothing to fetch, so the read-side choice sees fresh queues."""
        self.read_q[node_id] = read_q

    def report_de_load(self, report: GroupReport) -> None:
        """A DE group's load report without a fetch: exactly what `fetch_for_de_group` does
        for a group with no work (`has_de_work` false): it records the read queue and, for
        phase 1, the group's tokens; nothing is assigned, placed or woken. A caller skips the
        fetch's result objects this way when its group has nothing to take."""
        reported = 0
        for e in report.engines:
            reported += e.tok
        self.report_de_tokens(report.group_id, report.read_q, reported)

    def report_de_tokens(self, group_id: int, read_q: int, tokens: int) -> None:
        """report_de_load for a caller that keeps its group's token total (the sum of its
        engines' `tok`) itself: the same records, without a report to fill."""
        self.read_q[self._de_node[group_id]] = read_q
        if self._smart:
            pos = self.de_loads.index[group_id]
            self.de_loads.set_at(pos, tokens + self._private_tokens[pos])

    # -- fetches --------------------------------------------------------------------------
    def fetch_for_pe_group(self, report: GroupReport, into: FetchResult | None = None) -> FetchResult:
        """A PE group leader fetches: Algorithm 1 over the global FIFO (smart policies).
        `into`: a FetchResult to clear and fill instead of a new one, for a caller that reads
        each result before its next fetch (the simulator fetches millions of times)."""
        gid = report.group_id
        node = self._pe_node[gid]
        self.read_q[node] = report.read_q
        result = _cleared(into)
        if self._smart:
            # as floats: compiled, select_pe reads each as a C double, and an int would be
            # converted through a new float object at every read (the same value either way)
            read_qs = [float(report.read_q)] * len(report.engines)
            for request, i in assign_pes(self.pe_queue, report.engines, read_qs, self._alpha, self._beta):
                request.pe, request.pe_node = report.engines[i].engine_id, node
                self._finish(request, result)
            return result
        for request, engine_id in self._drain(self._pending_pe[gid]):
            request.pe, request.pe_node = engine_id, node
            self._finish(request, result)
        return result

    def fetch_for_de_group(self, report: GroupReport, into: FetchResult | None = None) -> FetchResult:
        """A DE group leader fetches: phase 1 drains the global queue into group queues, then
        phase 2 places this group's queue on its engines (smart policies). `into`: as for
        fetch_for_pe_group."""
        own = report.group_id
        node = self._de_node[own]
        self.read_q[node] = report.read_q
        result = _cleared(into)
        if self._smart:
            woken = result.woken_groups
            reported = 0
            for e in report.engines:
                reported += e.tok
            # by position in loads.ids; _private_tokens is indexed in place (compiled, a
            # memoryview local costs an atomic reference count and a zeroed temporary per call)
            loads = self.de_loads
            own_at = loads.index[own]
            private = self._private_at[own_at]  # de_private[own]
            loads.set_at(own_at, reported + self._private_tokens[own_at])
            if self.de_queue:
                popleft = self.de_queue.popleft
                while self.de_queue:
                    request = popleft()
                    at = loads.argmin_at()
                    queue = self._private_at[at]
                    if at != own_at and not queue:
                        woken.append(loads.ids[at])
                    _append(queue, request)
                    loads.add_at(at, request.prompt_tokens)
                    self._private_tokens[at] += request.prompt_tokens
            for request, i in assign_des(private, report.engines, self._z):
                self._private_tokens[own_at] -= request.prompt_tokens
                request.de, request.de_node = report.engines[i].engine_id, node
                self._finish(request, result)
            return result
        for request, engine_id in self._drain(self._pending_de[own]):
            request.de, request.de_node = engine_id, node
            self._finish(request, result)
        return result

    @staticmethod
    def _drain(pending: deque) -> list[tuple[Request, int]]:
        """Round robin: the engines were fixed at submit; the fetch hands them over."""
        pairs = list(pending)
        pending.clear()
        return pairs

    def _finish(self, request: Request, result: FetchResult) -> None:
        result.assigned.append(request)
        if request.pe < 0 or request.de < 0:
            return
        side = request.read_side = self.choose_read_side(request)
        if self._side_split and is_side(side, "split"):  # both nodes read: each queue grows by its part
            self.read_q[request.pe_node] += request.pe_read_tokens
            self.read_q[request.de_node] += request.hit_tokens - request.pe_read_tokens
        elif not self._io_free:
            node = request.pe_node if is_side(side, "pe") else request.de_node  # request.read_node
            self.read_q[node] += request.hit_tokens
        result.placed.append(request)

    def choose_read_side(self, request: Request) -> str:
        """The read side of a request whose PE and DE are chosen (paper.md §8.4); it also sets
        request.pe_read_tokens, the hit tokens the PE node reads (all, none, or a split's
        prefix)."""
        side = self._read_side(request)
        if not (self._side_split and is_side(side, "split")):
            request.pe_read_tokens = request.hit_tokens if is_side(side, "pe") else 0
        return side

    def _read_side(self, request: Request) -> str:
        if self._side_pe:  # "pe", or every read free (oracle)
            return "pe"
        if self._side_rr:
            self._rr_counts[2] += 1
            return "pe" if self._rr_counts[2] % 2 else "de"
        pe_q, de_q = self.read_q[request.pe_node], self.read_q[request.de_node]
        if self._side_split:
            request.pe_read_tokens = split_read(request.hit_tokens, pe_q, de_q, self._split_block)
            return split_side(request.pe_read_tokens, request.hit_tokens)
        return shorter_queue_side(pe_q, de_q)
