"""DualPath's global scheduler (`dualkv.sched.Scheduler`, unchanged) over vLLM instances.

One instance = one engine = one group = one node (node ids: the prefill instances first, then
the decode instances). A request is submitted on arrival; placement rounds fetch for every group
with the instances' load reports (instances.py), as the group leaders of paper.md §8 do, and a
request is placed once its PE, DE and read side are chosen. Rounds run on every arrival, on
every finished request and every `tick_s` while requests wait (a PE over its token budget, or
no DE with room, takes nothing until its load falls).

Under round-robin policies (`basic`) the scheduler fixes the engines at submit, so a round
fetches for every group, live or not (the hops then retry on a live instance); smart policies
fetch only for live instances, so a dead one takes no new work.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dualkv.errors import InvalidArgument
from dualkv.router.instances import Instance
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig


DEAD_TOKENS = 1 << 60  # the token load a dead decode instance reports


@dataclass
class Placement:
    request: Request
    pe: Instance
    de: Instance
    read_side: str  # "pe" or "de"


class Placer:
    def __init__(self, config: SchedulerConfig, prefills: list[Instance],
                 decodes: list[Instance]):
        if not prefills or not decodes:
            raise InvalidArgument("the router needs at least one prefill and one decode instance")
        self.instances = {i.node: i for i in (*prefills, *decodes)}
        self.pe_ids = [i.node for i in prefills]
        self.de_ids = [i.node for i in decodes]
        self.sched = Scheduler(config, [GroupSpec(n, n, (n,)) for n in self.pe_ids],
                               [GroupSpec(n, n, (n,)) for n in self.de_ids])
        self.policy = self.sched.policy
        self._waiting: dict[int, asyncio.Future] = {}

    def submit(self, request: Request) -> asyncio.Future:
        """Queues the request; the future resolves to its Placement."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[request.rid] = future
        self.sched.submit(request)
        self.place()
        return future

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def _fetches(self, gid: int) -> bool:
        return self.instances[gid].alive or not self.policy.is_smart

    def _report(self, gid: int) -> GroupReport:
        instance = self.instances[gid]
        seq, tok, free = instance.report()
        return GroupReport(gid, instance.read_q(), [EngineReport(gid, seq, tok, free)])

    def place(self) -> None:
        """One placement round: every group fetches (PEs first), twice, since a request gets
        its PE on one fetch and its DE on the next."""
        for gid in self.pe_ids + self.de_ids:
            self.sched.report_read_q(gid, self.instances[gid].read_q())
        for gid in self.de_ids:  # phase 1 of the DE choice sends work by group load: a dead
            if not self._fetches(gid):  # group reports a load no live one reaches
                self.sched.report_de_load(GroupReport(gid, 0, [EngineReport(gid, 0, DEAD_TOKENS)]))
        for _ in range(2):
            for gid in self.pe_ids + self.de_ids:
                if not self._fetches(gid):
                    continue
                is_pe = gid in self.pe_ids
                if is_pe and self.sched.has_pe_work(gid):
                    result = self.sched.fetch_for_pe_group(self._report(gid))
                elif not is_pe and self.sched.has_de_work(gid):
                    result = self.sched.fetch_for_de_group(self._report(gid))
                else:
                    continue
                for r in result.assigned:  # in flight on the engine from now on
                    engine = self.instances[r.pe if is_pe else r.de]
                    engine.inflight[r.rid] = r.prompt_tokens
                for r in result.placed:
                    self._resolve(r)

    def _resolve(self, r: Request) -> None:
        future = self._waiting.pop(r.rid, None)
        if future is None or future.done():  # its client gave up while it waited
            for instance in self.instances.values():
                instance.inflight.pop(r.rid, None)
            return
        if r.hit_tokens and not self.policy.is_io_free:
            self.instances[r.read_node].reads[r.rid] = r.hit_tokens
        future.set_result(Placement(r, self.instances[r.pe], self.instances[r.de], r.read_side))

    def read_done(self, rid: int) -> None:
        """The request's hit has been read (or will not be): it leaves its node's read queue."""
        for instance in self.instances.values():
            instance.reads.pop(rid, None)

    def finish(self, rid: int) -> None:
        """The request ended (answered or failed): it leaves every instance's load."""
        for instance in self.instances.values():
            instance.inflight.pop(rid, None)
            instance.reads.pop(rid, None)
        future = self._waiting.pop(rid, None)
        if future is not None and not future.done():
            future.cancel()
        self.place()
