"""Per-layer notice latency measured the way `ucx_perftest -t ucp_put_lat` measures its own:
a ping-pong between two processes, reported as half the round trip.

Process A puts `size` bytes with a (request 1, layer i) notice into B's region; B waits for that
notice, then puts `size` bytes with (request 2, layer i) back; A waits for it. As in perftest,
each side sends from its own send buffer (offset `size`) into the peer's receive buffer
(offset 0), so the bytes a side sends are never the ones its peer just wrote. One sample is
A's round trip / 2, so it holds one put + one notice + one wait on each side, through the
public Python API (`Agent.put`, `release`, `wait_notice`). The two agents live in separate
processes, as perftest's server and client do, so no GIL is shared between them.

`cpus=(a, b)` pins A and B to one CPU each for the measurement (`ucx_perftest -c` alike):
left free, the scheduler often stacks two spinning processes on one core of a small shared
host, and every message then waits for the peer's time slice.

`api` picks how each side puts: "python" calls `Agent.put` + `release` per layer (descriptors
validated per call, a handle each), "prepared" calls `post(i)` on a transfer prepared once
with `Agent.prepare_put` (what an engine streaming layers calls), "native" runs the same loop
in C++ (`Agent.pingpong`: submit / notice / wait_notice without the interpreter), which
separates the transport's share from the Python calls' share."""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time

import numpy as np

from dualkv.transfer import Agent, TransferConfig

PING, PONG = 1, 2
APIS = ("python", "prepared", "native")


def _agent(tls: str | None, size: int):
    agent = Agent(TransferConfig(traffic_class="kv", tls=tls))
    region, array = agent.alloc(2 * size)  # [receive buffer | send buffer]
    array[:] = 1
    return agent, region


def _descs(size: int):
    return np.full(1, size, np.int64), np.zeros(1, np.int64), np.full(1, size, np.int64)


def _responder(conn, tls: str | None, size: int, iters: int, reps: int, api: str,
               cpu: int | None):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    agent, region = _agent(tls, size)
    try:
        conn.send(agent.local_info())
        info = conn.recv()
        peer = agent.connect(info)
        remote = info["regions"][0]["id"]
        loc, rem, lengths = _descs(size)
        prepared = agent.prepare_put(peer, region, remote, loc, rem, lengths, request_id=PONG,
                                     num_layers=iters)
        conn.send("ready")
        for _ in range(reps):
            if api == "native":
                agent.native.pingpong(peer, region.id, remote, size, iters, False, 60)
            elif api == "prepared":
                post, wait_notice = prepared.post, agent.wait_notice
                for i in range(iters):
                    wait_notice(PING, i, 10, peer)
                    post(i)
                prepared.wait(10)
                agent.clear_notices(PING)
            else:
                for i in range(iters):
                    agent.wait_notice(PING, i, 10, peer)
                    agent.release(agent.put(peer, region, remote, loc, rem, lengths,
                                            request_id=PONG, layer=i))
                agent.clear_notices(PING)
            conn.recv()  # the next repetition starts after A cleared its notices too
    finally:
        conn.close()
        agent.close()


def notice_latency_us(size: int, iters: int, reps: int, tls: str | None = None,
                      api: str = "python", cpus: tuple[int, int] | None = None) -> list[float]:
    """Median one-way latency (half round trip, µs) of each of `reps` runs of `iters` pings;
    the first tenth of every run is warm-up and not counted."""
    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}")
    ctx = mp.get_context("spawn")  # a forked child would share this process' UCX state
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_responder, daemon=True,
                       args=(child_conn, tls, size, iters, reps, api, cpus and cpus[1]))
    proc.start()
    affinity = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {cpus[0]})
    agent, region = _agent(tls, size)
    try:
        info = _recv(conn, proc)
        peer = agent.connect(info)
        conn.send(agent.local_info())
        _recv(conn, proc)
        remote = info["regions"][0]["id"]
        medians = []
        for _ in range(reps):
            if api == "native":
                rtts = [float(t) / 1e9 for t in
                        agent.native.pingpong(peer, region.id, remote, size, iters, True, 60)]
            elif api == "prepared":
                rtts = _prepared_pings(agent, peer, region, remote, size, iters)
            else:
                rtts = _python_pings(agent, peer, region, remote, size, iters)
            conn.send("next")
            medians.append(statistics.median(rtts[iters // 10:]) / 2 * 1e6)
        return medians
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        agent.close()
        os.sched_setaffinity(0, affinity)


def _python_pings(agent, peer, region, remote, size, iters) -> list[float]:
    loc, rem, lengths = _descs(size)
    stamps, clock = [0.0] * (iters + 1), time.perf_counter
    for i in range(iters):
        stamps[i] = clock()
        agent.release(agent.put(peer, region, remote, loc, rem, lengths,
                                request_id=PING, layer=i))
        agent.wait_notice(PONG, i, 10, peer)
    stamps[iters] = clock()
    agent.clear_notices(PONG)
    return _round_trips(stamps)


def _prepared_pings(agent, peer, region, remote, size, iters) -> list[float]:
    loc, rem, lengths = _descs(size)
    prepared = agent.prepare_put(peer, region, remote, loc, rem, lengths, request_id=PING,
                                 num_layers=iters)
    post, wait_notice = prepared.post, agent.wait_notice
    stamps, clock = [0.0] * (iters + 1), time.perf_counter
    for i in range(iters):
        stamps[i] = clock()
        post(i)
        wait_notice(PONG, i, 10, peer)
    stamps[iters] = clock()
    prepared.wait(10)
    agent.clear_notices(PONG)
    return _round_trips(stamps)


def _round_trips(stamps: list[float]) -> list[float]:
    """One clock read per round trip (its start is the previous one's end), as perftest
    takes one per iteration: two reads would add a clock call to every sample."""
    return [end - start for start, end in zip(stamps, stamps[1:])]


def _recv(conn, proc, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        if not proc.is_alive() or time.monotonic() > deadline:
            raise TimeoutError(f"latency responder (pid {proc.pid}, exit code {proc.exitcode}) "
                               "sent nothing")
    return conn.recv()
