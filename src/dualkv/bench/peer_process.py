"""A transfer peer in a process of its own, for benches whose reference runs in two processes
(ucx_perftest's server and client): the local side submits, the other process only holds its
registered region and answers, as perftest's server does. Two agents in one process would
share one interpreter, one GIL and one address space, which the reference does not.

`ProcessPair` has the attributes of `bench.transfer.Pair` that the bandwidth loop uses:
`a` (the local agent), `ra` (its region), `rb.id` (the peer's region id), `peer_ab`."""
from __future__ import annotations

import multiprocessing as mp
from types import SimpleNamespace

from dualkv.errors import TimedOut
from dualkv.transfer import Agent, TransferConfig

START_TIMEOUT_S = 120.0


def _serve(conn, cls: str, tls: str | None, region_bytes: int) -> None:
    agent = Agent(TransferConfig(traffic_class=cls, tls=tls))
    try:
        _, array = agent.alloc(region_bytes)
        array[:] = 0
        conn.send(agent.local_info())
        agent.connect(conn.recv())  # both ways, as the one-process pair is joined
        conn.send("ready")
        conn.recv()  # "stop" (or EOF when the bench process is gone)
    except EOFError:
        pass
    finally:
        agent.close()
        conn.close()


class ProcessPair:
    def __init__(self, cls: str, tls: str | None, region_bytes: int):
        ctx = mp.get_context("spawn")  # a forked child would share this process' UCX state
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, cls, tls, region_bytes),
                                daemon=True)
        self.proc.start()
        self.a = Agent(TransferConfig(traffic_class=cls, tls=tls))
        self.ra, self.buf_a = self.a.alloc(region_bytes)
        self.buf_a[:] = 1
        info = self._recv()
        self.peer_ab = self.a.connect(info)
        self.rb = SimpleNamespace(id=info["regions"][0]["id"])
        self.conn.send(self.a.local_info())
        self._recv()

    def _recv(self):
        if not self.conn.poll(START_TIMEOUT_S):
            self.close()
            raise TimedOut(f"the peer process did not answer within {START_TIMEOUT_S:.0f} s")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.a.close()
