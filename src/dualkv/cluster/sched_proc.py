"""The scheduler process of the local cluster: it owns the one `dualkv.sched.Scheduler`,
unchanged, and nothing else.

Two sockets: a REP socket for the driver (submit requests, ask for placements, mark engines
down or up), and a PULL socket where every engine pushes its load after each change (node read
queue in tokens, unfinished requests and tokens, and for a DE the free tokens of its host
buffer, which the scheduler's DE choice treats as the engine's free capacity: a request that
does not fit waits in the scheduler's queue until a DE reports room).

Engine id = node id = group id (one engine per node): 0 .. num_pe-1 the PEs, then the DEs.
Run as `python -m dualkv.cluster.sched_proc --endpoint ipc://... --reports ipc://...
--policy dualpath --num-pe 1 --num-de 2`.
"""
from __future__ import annotations

import argparse
import sys

import zmq

from dualkv.cluster.messages import Ack, LoadReport, Placed, Placement, Stop, decode_report
from dualkv.cluster.protocol import serve
from dualkv.errors import InvalidArgument
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig
from dualkv.sched.config import require_one_read_side


class SchedulerServer:
    def __init__(self, policy: str, num_pe: int, num_de: int):
        require_one_read_side(policy, "the local cluster")  # Placement carries one read side
        self.pe_ids = list(range(num_pe))
        self.de_ids = list(range(num_pe, num_pe + num_de))
        self.sched = Scheduler(SchedulerConfig(policy),
                               [GroupSpec(i, i, (i,)) for i in self.pe_ids],
                               [GroupSpec(i, i, (i,)) for i in self.de_ids])
        # the latest report of each engine, and what was placed on it since: a report counts
        # the requests up to the newest id the engine had seen (`max_rid`) when it was sent
        self.reports = {i: self._empty(i) for i in self.pe_ids + self.de_ids}
        self.unseen = {i: {} for i in self.pe_ids + self.de_ids}  # rid -> (tokens, hbm)
        # hit tokens of reads placed on a node that its engine had not yet seen: a PE issues
        # its reads only inside the prefill, so its own report never shows them queued
        self.unseen_reads = {i: {} for i in self.pe_ids + self.de_ids}
        self.down: set[int] = set()

    @staticmethod
    def _empty(engine: int) -> LoadReport:
        return LoadReport(engine=engine)

    def on_report(self, report: LoadReport) -> None:
        engine = report.engine
        if engine not in self.reports or engine in self.down:
            return
        self.reports[engine] = report
        mark = report.max_rid
        self.unseen[engine] = {r: v for r, v in self.unseen[engine].items() if r > mark}
        self.unseen_reads[engine] = {r: v for r, v in self.unseen_reads[engine].items() if r > mark}
        self.sched.report_read_q(engine, self._read_q(engine))

    def _read_q(self, node: int) -> int:
        """The node's read queue: what its engine reported plus the reads placed since."""
        return self.reports[node].read_q + sum(self.unseen_reads[node].values())

    def _load(self, engine: int) -> EngineReport:
        """The engine's report with the requests placed on it that it had not yet seen."""
        report, unseen = self.reports[engine], self.unseen[engine].values()
        free = float("inf") if report.free_tokens is None else report.free_tokens
        return EngineReport(engine, report.seq + len(unseen),
                            report.tok + sum(t for t, _ in unseen),
                            free - sum(h for _, h in unseen))

    def op_submit(self, msg) -> Ack:
        for r in msg.requests:
            self.sched.submit(Request(r.rid, r.prompt_tokens, r.hit_tokens, r.gen_tokens))
        return Ack()

    def op_place(self, msg) -> Placed:
        """Fetches for every live group (PEs first); the requests now placed."""
        if not set(self.pe_ids) - self.down:
            return Placed(placed=[], num_waiting=self.sched.num_waiting, no_pe=True)
        placed = []
        for _ in range(2):  # a request gets its PE on one fetch and its DE on the next
            for gid in self.pe_ids + self.de_ids:
                if gid in self.down:
                    continue
                report = GroupReport(gid, self._read_q(gid), [self._load(gid)])
                if gid in self.pe_ids and self.sched.has_pe_work(gid):
                    result = self.sched.fetch_for_pe_group(report)
                elif gid in self.de_ids and self.sched.has_de_work(gid):
                    result = self.sched.fetch_for_de_group(report)
                else:
                    continue
                for r in result.assigned:
                    engine = r.pe if gid in self.pe_ids else r.de
                    self.unseen[engine][r.rid] = (r.prompt_tokens, r.hbm_tokens)
                for r in result.placed:
                    if r.hit_tokens and not self.sched.policy.is_io_free:
                        node = r.read_node
                        self.unseen_reads[node][r.rid] = r.hit_tokens
                placed += result.placed
        return Placed(placed=[Placement(rid=r.rid, pe=r.pe, de=r.de, read_side=r.read_side)
                              for r in placed],
                      num_waiting=self.sched.num_waiting, no_pe=False)

    def op_down(self, msg) -> Ack:
        """An engine process died: no fetch for its group until `up`."""
        self.down.add(msg.engine)
        return Ack()

    def op_up(self, msg) -> Ack:
        self.down.discard(msg.engine)
        self.reports[msg.engine] = self._empty(msg.engine)
        self.unseen[msg.engine], self.unseen_reads[msg.engine] = {}, {}
        return Ack()

    def op_stop(self, msg) -> Ack:
        return Ack()

    def serve(self, endpoint: str, reports_endpoint: str) -> None:
        context = zmq.Context.instance()
        rep, pull = context.socket(zmq.REP), context.socket(zmq.PULL)
        rep.bind(endpoint)
        pull.bind(reports_endpoint)
        poller = zmq.Poller()
        poller.register(rep, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        while True:
            events = dict(poller.poll(1000))
            while pull.poll(0):  # every report first, so a fetch sees the freshest loads
                try:
                    self.on_report(decode_report(pull.recv()))
                except InvalidArgument:  # a malformed report: the engine's next one counts
                    pass
            if rep not in events:
                continue
            msg, reply = serve(self, rep.recv())
            rep.send(reply)
            if isinstance(msg, Stop):
                break
        rep.close(0)
        pull.close(0)


def main(argv=None):
    p = argparse.ArgumentParser(prog="dualkv.cluster.sched_proc")
    p.add_argument("--endpoint", required=True, help="REP socket for the driver")
    p.add_argument("--reports", required=True, help="PULL socket for the engines' load reports")
    p.add_argument("--policy", default="dualpath")
    p.add_argument("--num-pe", type=int, default=1)
    p.add_argument("--num-de", type=int, default=1)
    args = p.parse_args(argv)
    SchedulerServer(args.policy, args.num_pe, args.num_de).serve(args.endpoint, args.reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
