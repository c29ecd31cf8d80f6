"""A local cluster: a scheduler process running `dualkv.sched.Scheduler` unchanged, `num_pe`
PE processes (default one) and `num_de` DE processes sharing a block directory, joined by UCX
(KV) and ZeroMQ + typed msgpack messages (control, messages.py). One engine per node, so every
engine is its own group; engines push their load to the scheduler process, which places each
request (PE, DE, read side).

This process is the driver (runner.py): it submits turns, asks the scheduler for placements,
queues each placed turn on its PE, takes the PE's batches from its `PrefillBatcher`
(batching.py: the simulator's batcher, compute quota and chunked prefill), opens each turn's
DE buffer with its first chunk (on the de read path the DE reads the hit and streams it to
the PE), admits turns whose last chunk is done into the DEs' running decode batches, and
collects finished turns.

Matching is the store's: the driver opens its own `BlockStore` on the shared directory and
matches with `probe_disk=True`, so blocks the DEs wrote back (published files) join its index
at the first match that reaches them; a load still verifies every block.

Each engine process is a node with its own TrafficManager: storage reads pay its storage-NIC
bucket (`snic_mbps`), KV sent to another node (DE -> PE hit layers, PE -> DE prompt KV) its
compute-NIC bucket (`cnic_mbps`), write-backs are charged to its storage NIC.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np

from dualkv.cluster.batching import DEFAULT_QUOTA_S, pe_batcher
from dualkv.cluster.jobs import ClusterTurn, Job, Session
from dualkv.cluster.messages import AdmitRequest, Open, Opened, PrefillRequest, Stats
from dualkv.cluster.procs import ClusterProcs
from dualkv.cluster.runner import Runner
from dualkv.engine.config import ModelConfig
from dualkv.errors import InvalidArgument
from dualkv.sched.config import require_one_read_side
from dualkv.store import BlockStore, StoreConfig

__all__ = ["ClusterTurn", "LocalCluster", "Session"]


def engine_threads(num_engines: int) -> int:
    """torch CPU threads per engine process: the machine's cores shared by its engines, so
    that emulated nodes do not oversubscribe the cores they stand on."""
    return max(1, (os.cpu_count() or 1) // num_engines)


class LocalCluster:
    def __init__(self, cfg: ModelConfig, root: str, num_de: int = 1, policy: str = "dualpath",
                 seed: int = 0, block_tokens: int = 64, batch_invariant: bool = True,
                 timeout_s: float = 120.0, snic_mbps: float = 0.0, device: str = "cpu",
                 de_pool_slots: int = 256, max_tokens: int = 8192, num_pe: int = 1,
                 cnic_mbps: float = 0.0, pe_flops_per_s: float | None = None,
                 compute_quota_s: float | None = DEFAULT_QUOTA_S):
        """pe_flops_per_s and compute_quota_s set the PEs' batchers (batching.py): the
        measured prefill FLOP/s (None: DEFAULT_PE_FLOPS_PER_S) and the attention quota of a
        batch (None: no quota, every ready turn that fits max_tokens)."""
        if num_de < 1 or num_pe < 1:
            raise InvalidArgument(f"a cluster needs a PE and a DE, got {num_pe} and {num_de}")
        self.cfg, self.block_tokens, self.timeout_s = cfg, block_tokens, timeout_s
        self.layout = cfg.layout(block_tokens)
        # the PE's prefill follows the policy's flag: layerwise (KV streamed per layer) or not
        self.mode = "dualpath" if require_one_read_side(policy, "the local cluster").is_layerwise \
            else "basic"
        self.de_pool_slots, self.max_tokens = de_pool_slots, max_tokens
        self.store = BlockStore(StoreConfig(root, self.layout, pool_slots=1, cuda="off"))
        self.num_buffer_waits = 0  # turns a full DE buffer refused (they waited, then ran)
        self.peak_waiting_turns = 0  # most turns the scheduler held back after a placement pass
        self.on_poll = None        # on_poll(role, reply): a hook that sees every DE poll
        self.on_prefill = None     # on_prefill(pe, chunks): sees every batch sent to a PE
        #                            (its sched.Chunks; chunk.request.tag is the turn's Job)
        self.prefill_failures = []  # (pe, exception, monotonic time) of every failed prefill batch
        self._rid = 0
        spec = json.dumps({"config": asdict(cfg), "seed": seed, "batch_invariant": batch_invariant})
        argv = ["--root", root, "--model", spec, "--block-tokens", str(block_tokens),
                "--snic-mbps", str(snic_mbps), "--cnic-mbps", str(cnic_mbps),
                "--timeout-s", str(timeout_s),
                "--torch-threads", str(engine_threads(num_pe + num_de)),
                "--device", device, "--max-tokens", str(max_tokens)]
        self.procs = ClusterProcs(num_de, policy, argv, timeout_s,
                                  de_argv=["--pool-slots", str(de_pool_slots)], num_pe=num_pe)
        # one batcher per PE, the same for every policy (the policy's flags set the engines)
        self.batchers = {pe: pe_batcher(cfg, max_tokens, pe_flops_per_s, compute_quota_s)
                         for pe in self.procs.pe_roles}

    @property
    def roles(self) -> list[str]:
        return self.procs.roles

    @property
    def num_restarts(self) -> int:
        return self.procs.num_restarts

    # -- running --------------------------------------------------------------------------
    def run_turn(self, prompt, max_new_tokens: int) -> ClusterTurn:
        return self.run_batch([(prompt, max_new_tokens)])[0]

    def run_batch(self, turns, max_retries: int = 2) -> list[ClusterTurn]:
        """Runs (prompt, max_new_tokens) turns of different conversations, all submitted now.

        Turns caught by a DE process dying are submitted again (the dead DE is replaced) and
        recomputed from what the store holds, up to max_retries times each."""
        sessions = [Session(0.0, list(p), n) for p, n in turns]
        return [turns[0] for turns in self.run_sessions(sessions, max_retries)]

    def run_sessions(self, sessions: list[Session], max_retries: int = 2) -> list[list[ClusterTurn]]:
        """Runs conversations arriving over time (online); every turn of each, in order."""
        return Runner(self, sessions, max_retries).run()

    # -- what the runner asks ---------------------------------------------------------------
    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def match(self, keys: np.ndarray) -> int:
        """Stored prefix of the chain, in blocks (the store's match, seeing other processes'
        published blocks)."""
        return self.store.match(keys, touch=False, probe_disk=True)

    def check_fits(self, num_prompt: int, max_new_tokens: int) -> None:
        """A turn that could never be admitted is an error now, not a wait without end (the
        room an empty DE buffer offers, as decode_server.free_tokens counts it)."""
        room = (self.de_pool_slots - 1) * self.block_tokens // 2
        if num_prompt > self.max_tokens or num_prompt + max_new_tokens > room:
            raise InvalidArgument(f"a turn of {num_prompt} + {max_new_tokens} tokens exceeds an "
                                  f"empty DE buffer ({room} tokens of {self.de_pool_slots} slots) "
                                  f"or the PE's {self.max_tokens} prompt tokens")

    def open(self, job: Job, recv_offset: int) -> Opened:
        """Opens the turn's DE buffer; its hit (de read side) lands at recv_offset of the PE's
        receive area."""
        procs = self.procs
        opened = procs.clients[job.role].call(Open(
            rid=job.rid, num_tokens=len(job.prompt), max_new_tokens=job.gen,
            hit_keys=self._hit_keys(job), read_side=job.read_side,
            pe_peer=procs.pe_peer[job.pe_role, job.role],
            pe_recv_region=procs.hello[job.pe_role].recv_region,
            pe_recv_offset=recv_offset), self.timeout_s)
        job.recv_offset = recv_offset
        return opened

    def recv_bytes(self, opened: Opened) -> int:
        """What an opened turn's hit takes of the PE's receive area."""
        lay = self.layout
        return lay.num_layers * opened.num_hit_blocks * lay.layer_block_bytes

    def _hit_keys(self, job: Job) -> bytes:
        return job.keys[:job.hit_tokens // self.block_tokens].tobytes()

    def prefill_request(self, job: Job, chunk) -> PrefillRequest:
        """The PE's message for one `sched.Chunk` of the turn."""
        procs, opened = self.procs, job.opened
        return PrefillRequest(
            rid=job.rid, prompt=job.prompt.tolist(), cached=chunk.cached,
            end=chunk.cached + chunk.bsz, is_last=chunk.is_last, read_side=job.read_side,
            hit_keys=self._hit_keys(job), num_hit_blocks=opened.num_hit_blocks,
            recv_offset=job.recv_offset, ready_at=opened.ready_at,
            de_peer=procs.de_peer[job.pe_role, job.role],
            de_region=procs.hello[job.role].pool_region, slot_offsets=opened.slot_offsets)

    def admit_request(self, job: Job) -> AdmitRequest:
        cached = job.first.num_cached_blocks
        return AdmitRequest(
            rid=job.rid, prompt=job.prompt.tolist(), first_token=job.first.first_token,
            max_new_tokens=job.gen, num_cached_blocks=cached,
            prior_key=job.keys[cached - 1].tobytes() if cached else b"",
            pe_peer=self.procs.pe_peer[job.pe_role, job.role])

    # -- figures and lifetime -------------------------------------------------------------
    def snic_bytes(self) -> dict:
        """Bytes each node's emulated storage NIC has read, by role."""
        return {role: self.procs.clients[role].call(Stats(), self.timeout_s).snic_bytes
                for role in self.roles}

    def close(self) -> None:
        self.procs.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
