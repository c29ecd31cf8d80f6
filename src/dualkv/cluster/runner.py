"""The driver's event loop: sessions arrive, their turns go to the scheduler process, placed
turns queue on their PE, whose `PrefillBatcher` (batching.py) forms every batch — a long
turn may be prefilled in chunks over several batches — and turns whose last chunk is done are
admitted into the DEs' running decode batches; finished turns come back from DE polls, which
submits each session's next turn at once.

DEs decode between control messages and the driver does not wait for a PE's prefill (it
polls for the reply), so the PE prefills the next batch while the DEs decode earlier ones,
turns finish and are placed while a PE reads, and agents overlap.

Failures: a DE process that dies (at any moment, mid-decode included), or is found stopped
(SIGSTOP: it is killed then, see procs._is_serving), is replaced by a fresh one and every turn it held is submitted again, recomputed from what the store holds; the
blocks it wrote back stay (atomic block files). One that dies under a PE's prefill (streaming
the hit, or the target of its KV) fails that batch at once (`_fail_batch`): every turn of the
batch goes again, once (a chunked turn from its first chunk). A dead PE's turns go to the
other PEs; with none left the run ends with PeerDisconnected naming it. A DE without buffer
room refuses a turn (OutOfMemory); the turn waits and is submitted again when a DE has
finished something — nothing is dropped.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from dualkv.cluster.jobs import Job
from dualkv.cluster.messages import (Admit, DecodeResult, Drop, Place, Poll, Prefill, Submit,
                                     SubmitRequest)
from dualkv.errors import DualKVError, OutOfMemory, PeerDisconnected, TimedOut
from dualkv.sched import Request
from dualkv.store.keys import chain_keys

IDLE_SLEEP_S = (0.002, 0.02)  # idle back-off: first and longest sleep between loop passes


class Runner:
    def __init__(self, cluster, sessions, max_retries: int = 2):
        self.c, self.sessions, self.max_retries = cluster, sessions, max_retries
        self.results = [[] for _ in sessions]
        self.arrivals = deque(sorted(range(len(sessions)), key=lambda i: sessions[i].arrival_s))
        self.by_rid: dict[int, Job] = {}
        # per PE: placed turns waiting for (the rest of) their prefill, as the batcher's queue
        self.queues: dict[str, deque[Request]] = {pe: deque() for pe in cluster.procs.pe_roles}
        self.in_de: dict[str, dict[int, Job]] = {r: {} for r in cluster.procs.roles[1:]}
        self.buffer_wait: list[Job] = []      # refused by a full DE buffer
        self.num_open = 0                     # sessions not finished
        self.idle_since = None
        self.num_waiting, self._recv_offset = 0, 0
        self.idle_sleep = IDLE_SLEEP_S[0]
        self.unplaced: set[int] = set()       # submitted, not yet placed by the scheduler
        self.prefilling: dict[str, list] = {}  # PE -> the chunks it is prefilling

    def run(self) -> list:
        self.start = time.monotonic()
        self.num_open = len(self.sessions)
        while self.num_open:
            busy = self._check_des() | self._arrive() | self._place() | \
                self._start_prefills() | self._collect_prefills() | self._poll()
            self._check_idle(busy)
        return self.results

    # -- arrivals and submission ----------------------------------------------------------
    def _arrive(self) -> bool:
        now, new = time.monotonic() - self.start, []
        while self.arrivals and self.sessions[self.arrivals[0]].arrival_s <= now:
            i = self.arrivals.popleft()
            s = self.sessions[i]
            new.append(Job(i, np.asarray(s.prompt, np.int32), s.max_new_tokens, time.monotonic()))
        self._submit(new)
        return bool(new)

    def _submit(self, jobs) -> None:
        if not jobs:
            return
        c, bt = self.c, self.c.block_tokens
        for job in jobs:
            c.check_fits(len(job.prompt), job.gen)
            job.keys = chain_keys(job.prompt, bt)
            job.matched = c.match(job.keys)
            job.hit_tokens = min(job.matched * bt, (len(job.prompt) - 1) // bt * bt)
            job.rid, job.role, job.opened, job.first = c.next_rid(), "", None, None
            self.by_rid[job.rid] = job
            self.unplaced.add(job.rid)
        c.procs.sched.call(Submit(requests=[
            SubmitRequest(rid=j.rid, prompt_tokens=len(j.prompt), hit_tokens=j.hit_tokens,
                          gen_tokens=j.gen) for j in jobs]), c.timeout_s)

    def _resubmit(self, jobs) -> None:
        """Turns caught by a failure go again, a bounded number of times."""
        for job in jobs:
            job.attempts += 1
            if job.attempts > self.max_retries:
                raise PeerDisconnected(f"a turn of session {job.session} failed "
                                       f"{job.attempts} times")
        self._submit(jobs)

    def _place(self) -> bool:
        reply = self.c.procs.sched.call(Place(), self.c.timeout_s)
        if reply.no_pe:
            self.c.procs.check_pes()  # raises: no PE is left
        roles, lost = self.c.procs.roles, []
        for p in reply.placed:
            self.unplaced.discard(p.rid)
            job = self.by_rid[p.rid]
            job.pe_role, job.role, job.read_side = roles[p.pe], roles[p.de], p.read_side
            if job.pe_role in self.c.procs.dead_pes:
                lost.append(job)
                continue
            job.request = Request(job.rid, len(job.prompt), job.hit_tokens, job.gen, tag=job)
            self.queues[job.pe_role].append(job.request)
        self._resubmit(lost)  # given a PE before it died
        self.num_waiting = reply.num_waiting
        # turns the scheduler holds back (no DE with room): admission waiting
        self.c.peak_waiting_turns = max(self.c.peak_waiting_turns, len(self.unplaced))
        return bool(reply.placed)

    # -- prefill --------------------------------------------------------------------------
    def _start_prefills(self) -> bool:
        """Every idle PE with queued turns starts its batcher's next batch; the driver does not
        wait for it. A turn's DE buffer is opened with its first chunk."""
        started = False
        for pe in self.c.procs.live_pes():
            if pe in self.prefilling or not self.queues[pe]:
                continue
            chunks, _ = self.c.batchers[pe].next_batch(self.queues[pe])
            started = True
            chunks = self._open_chunks(chunks)
            # a DE that died during these opens was replaced: the buffers opened on it before
            # went with it, so those turns go again too
            stale = [ch for ch in chunks
                     if ch.request.tag.de_pid != self.c.procs[ch.request.tag.role].pid]
            if stale:
                chunks = [ch for ch in chunks if ch not in stale]
                self._resubmit(self._unqueue([ch.request.tag for ch in stale]))
            if chunks and pe in self.c.procs.live_pes():
                self.c.procs.clients[pe].send(Prefill(mode=self.c.mode, requests=[
                    self.c.prefill_request(ch.request.tag, ch) for ch in chunks]))
                self.prefilling[pe] = chunks
                if self.c.on_prefill is not None:
                    self.c.on_prefill(pe, chunks)
            elif chunks:
                self._resubmit(self._unqueue([ch.request.tag for ch in chunks]))
        return started

    def _open_chunks(self, chunks) -> list:
        """The chunks whose turn has its DE buffer open, opening it with the turn's first
        chunk. A turn refused (full DE buffer) or caught by a DE's death leaves its PE's
        queue, where a chunked turn would stay: it goes to the scheduler again."""
        self._recv_offset = 0
        kept, refused = [], []
        for ch in chunks:
            job = ch.request.tag
            if self._is_current(ch) and (job.opened is not None or self._open(job)):
                kept.append(ch)
            else:
                refused.append(job)
        self._unqueue(refused)
        return [ch for ch in kept if self._is_current(ch)]  # not submitted again meanwhile

    @staticmethod
    def _is_current(chunk) -> bool:
        """The chunk's turn was not submitted again (a failure gives it a new rid)."""
        return chunk.request.tag.rid == chunk.request.rid

    def _unqueue(self, jobs) -> list[Job]:
        """Takes `jobs` out of the PE queues (a chunked turn stays queued between chunks)."""
        gone = {id(job) for job in jobs}
        self._take_queued(lambda pe, job: id(job) in gone)
        return list(jobs)

    def _take_queued(self, pick) -> list[Job]:
        """Takes out of the PE queues, and returns, every queued turn with pick(pe, job)."""
        taken = []
        for pe, queue in self.queues.items():
            taken += [r.tag for r in queue if pick(pe, r.tag)]
            self.queues[pe] = deque(r for r in queue if not pick(pe, r.tag))
        return taken

    def _collect_prefills(self, block: bool = False) -> bool:
        """Admits the turns whose last chunk a finished PE batch held (`block`: waits for
        every batch). A turn with chunks left stays at the head of its PE's queue."""
        done = False
        for pe in list(self.prefilling):
            client = self.c.procs.clients[pe]
            if not block and not client.socket.poll(0) and self.c.procs.is_alive(pe):
                continue
            chunks, done = self.prefilling.pop(pe), True
            jobs = [ch.request.tag for ch in chunks]
            try:
                replies = client.recv(self.c.timeout_s).results
            except DualKVError as exc:
                self._fail_batch(pe, jobs, exc)
                continue
            finished = []
            for ch, job, reply in zip(chunks, jobs, replies):
                if ch.is_last:
                    job.first, job.first_at = reply, reply.done_at or time.monotonic()
                    self._forget_failed(job)
                    finished.append(job)
            self._admit(finished)
        return done

    def _forget_failed(self, job: Job) -> None:
        """Hit blocks that did not load (missing, corrupt: the engine's store deleted them)
        leave the driver's index, so no later turn is offered them; they are written back
        again by the turn that recomputes them."""
        hit, cached = job.hit_tokens // self.c.block_tokens, job.first.num_cached_blocks
        if cached < hit:
            self.c.store.index.remove(job.keys[cached:hit])

    def _open(self, job: Job) -> bool:
        try:
            job.opened = self.c.open(job, self._recv_offset)
            job.de_pid = self.c.procs[job.role].pid
        except OutOfMemory:
            self.buffer_wait.append(job)  # admission waits for buffer room
            self.c.num_buffer_waits += 1
            return False
        except PeerDisconnected:
            self._replace(job.role, extra=[job])
            return False
        self._recv_offset += self.c.recv_bytes(job.opened)
        return True

    def _admit(self, jobs) -> None:
        per_de = {}
        for job in jobs:
            per_de.setdefault(job.role, []).append(job)
        for role, group in per_de.items():
            try:
                self.c.procs.clients[role].call(Admit(requests=[
                    self.c.admit_request(j) for j in group]), self.c.timeout_s)
            except PeerDisconnected:
                self._replace(role, extra=group)
                continue
            self.in_de[role].update((j.rid, j) for j in group)

    def _fail_batch(self, pe: str, jobs, exc: Exception) -> None:
        """A prefill failed: its PE died (the others go on) or a DE died under it. Live DEs
        free the batch's buffers, dead DEs are replaced, every turn of it goes again."""
        self.c.prefill_failures.append((pe, exc, time.monotonic()))
        self._unqueue(jobs)  # a chunked turn of the batch starts again from scratch
        roles = {j.role for j in jobs}
        for role in roles:
            if self.c.procs.is_alive(role):
                self.c.procs.clients[role].call(Drop(rids=[
                    j.rid for j in jobs if j.role == role]), self.c.timeout_s)
        self._check_pes()  # raises when no PE is left
        if pe in self.c.procs.dead_pes:
            self._resubmit(jobs)
            return
        dead = [r for r in roles if not self.c.procs.is_alive(r)]
        if not dead:
            raise exc
        # split before replacing: a resubmitted turn no longer names its dead DE
        lost = {role: [j for j in jobs if j.role == role] for role in dead}
        survivors = [j for j in jobs if j.role not in dead]
        for role in dead:
            self._replace(role, extra=lost[role])
        self._resubmit(survivors)

    def _drop_opened(self, jobs) -> None:
        """Frees the DE buffers of opened turns that will not be admitted (live DEs only)."""
        per_de = {}
        for job in jobs:
            if job.opened is not None and self.c.procs.is_alive(job.role):
                per_de.setdefault(job.role, []).append(job.rid)
        for role, rids in per_de.items():
            self.c.procs.clients[role].call(Drop(rids=rids), self.c.timeout_s)

    def _check_pes(self) -> None:
        """PEs found dead: their placed turns go to the scheduler again (raises if none left)."""
        dead = self.c.procs.check_pes()
        if dead:
            lost = self._take_queued(lambda pe, job: pe in dead)
            self._drop_opened(lost)  # a chunked turn between chunks holds its DE buffer
            self._resubmit(lost)

    def _check_des(self) -> bool:
        """A DE found dead or stopped (and then killed) is replaced like one that died."""
        down = self.c.procs.stopped_des()
        for role in down:
            self._replace(role)
        return bool(down)

    # -- decode results -------------------------------------------------------------------
    def _poll(self) -> bool:
        busy = False
        for role, jobs in self.in_de.items():
            if not jobs:
                continue
            try:
                reply = self.c.procs.clients[role].call(Poll(), self.c.timeout_s)
            except PeerDisconnected:
                self._replace(role)
                busy = True
                continue
            if self.c.on_poll is not None:
                self.c.on_poll(role, reply)
            for out in reply.results:
                self._finish(jobs.pop(out.rid), out)
                busy = True
        if busy or not any(self.in_de.values()):
            self._retry_buffer_waits()
        return busy

    def _retry_buffer_waits(self) -> None:
        """Room may have freed: the turns a full DE refused go to the scheduler again."""
        waiting, self.buffer_wait = self.buffer_wait, []
        self._submit(waiting)

    def _finish(self, job: Job, out: DecodeResult) -> None:
        del self.by_rid[job.rid]
        self.results[job.session].append(job.turn(out, self.start))
        nxt = self.sessions[job.session].next_turn
        follow = nxt(job.prompt.tolist(), out.generated) if nxt is not None else None
        if follow is None:
            self.num_open -= 1
            return
        prompt, gen = follow
        self._submit([Job(job.session, np.asarray(prompt, np.int32), gen, time.monotonic())])

    def _replace(self, role: str, extra=()) -> None:
        """A dead DE: a fresh process in its place, and its turns submitted again. The PEs
        finish their batches first (the new DE joins every PE over its control socket)."""
        self._collect_prefills(block=True)
        self._check_pes()
        if not self.c.procs.is_alive(role):  # else replaced while the batches finished
            self.c.procs.replace_de(role)
        lost = list(self.in_de[role].values()) + list(extra)
        gone = {id(job) for job in lost}
        taken = self._take_queued(lambda pe, job: job.role == role or id(job) in gone)
        lost += [job for job in taken if id(job) not in gone]
        self.in_de[role] = {}
        self._resubmit(lost)
        self._retry_buffer_waits()

    def _check_idle(self, busy: bool) -> None:
        """Every wait has a deadline: a run with nothing moving for timeout_s fails."""
        in_flight = any(self.in_de.values()) or bool(self.prefilling)
        if busy:
            self.idle_sleep = IDLE_SLEEP_S[0]
        if busy or in_flight or (self.arrivals and not self.unplaced and not self.buffer_wait):
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        elif time.monotonic() - self.idle_since > self.c.timeout_s:
            raise TimedOut(f"{len(self.unplaced)} turns waited {self.c.timeout_s} s for a placement "
                           f"and {len(self.buffer_wait)} for DE buffer room")
        if not busy:  # nothing moved: back off (2 cores are shared by every process here)
            time.sleep(self.idle_sleep)
            self.idle_sleep = min(IDLE_SLEEP_S[1], 2 * self.idle_sleep)
