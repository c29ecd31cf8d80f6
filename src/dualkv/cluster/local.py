"""A local cluster of engine processes: one PE process and `num_de` DE processes sharing a block
directory, joined by UCX (KV) and ZeroMQ + msgpack (control), driven from this process, which
plays the scheduler process: `dualkv.sched.Scheduler`, unchanged, picks each request's DE and
read side (one engine per node, so every engine is its own group).

`run_batch` places a batch of turns, opens each request's DE buffer (the DE reads the hit on
the de read path and streams it to the PE), runs one layerwise prefill over the whole batch on
the PE, then every DE decodes its requests as one batch, all DEs at once.

The driver owns the prefix view (which chain keys are stored): engine processes each open
their own `BlockStore` on the shared directory, and a store's index sees only the blocks its
own process wrote, so DEs report what they wrote back and the driver matches against that.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import zmq

from dualkv.cluster.protocol import Client
from dualkv.engine.config import ModelConfig
from dualkv.errors import InvalidArgument, PeerDisconnected
from dualkv.keys import chain_keys
from dualkv.sched import EngineReport, GroupReport, GroupSpec, Request, Scheduler, SchedulerConfig


def _child_env() -> dict:
    """This process's environment, with the dualkv package it imported first on the path."""
    import dualkv

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(dualkv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class ClusterTurn:
    generated: list[int]
    num_matched_blocks: int
    num_cached_blocks: int
    de: int            # the DE process (0-based) that decoded it
    read_side: str
    ttft_s: float = 0.0    # batch start -> the PE's prefill reply (one batch: one first token time)
    decode_s: float = 0.0  # first token -> its DE's decode reply (all its generated tokens)


class LocalCluster:
    def __init__(self, cfg: ModelConfig, root: str, num_de: int = 1, policy: str = "dualpath",
                 seed: int = 0, block_tokens: int = 64, batch_invariant: bool = True,
                 timeout_s: float = 120.0, snic_mbps: float = 0.0, device: str = "cpu"):
        if num_de < 1:
            raise InvalidArgument(f"a cluster needs at least one DE, got {num_de}")
        self.cfg, self.block_tokens, self.timeout_s = cfg, block_tokens, timeout_s
        self.mode = "basic" if policy == "basic" else "dualpath"
        self.stored: set[bytes] = set()
        self._rid = 0
        self._dir = tempfile.mkdtemp(prefix="dualkv-cluster-")
        self.roles = ["pe"] + [f"de{i}" for i in range(num_de)]
        spec = json.dumps({"config": asdict(cfg), "seed": seed, "batch_invariant": batch_invariant})
        self._argv = ["--root", root, "--model", spec, "--block-tokens", str(block_tokens),
                      "--snic-mbps", str(snic_mbps), "--timeout-s", str(timeout_s),
                      "--device", device]
        self.procs, self.clients, self.hello, self.de_peer, self.pe_peer = {}, {}, {}, {}, {}
        self.num_restarts = 0
        for role in self.roles:
            self._spawn(role)
        for role in self.roles:
            self.hello[role] = self.clients[role].call("hello", timeout_s)
        for role in self.roles[1:]:
            self._join(role)
        # engine id = node id = group id: 0 the PE, 1.. the DEs
        self.sched = Scheduler(SchedulerConfig(policy), [GroupSpec(0, 0, (0,))],
                               [GroupSpec(i, i, (i,)) for i in range(1, num_de + 1)])

    def _spawn(self, role: str) -> None:
        endpoint = f"ipc://{self._dir}/{role}-{self.num_restarts}.sock"
        proc = self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "dualkv.cluster.engine_proc", "--role", role[:2],
             "--endpoint", endpoint] + self._argv, env=_child_env())
        self.clients[role] = Client(zmq.Context.instance(), endpoint,
                                    is_alive=lambda: proc.poll() is None)

    def _join(self, de_role: str) -> None:
        """UCX rendezvous of the PE and one DE, both ways."""
        t = self.timeout_s
        self.de_peer[de_role] = self.clients["pe"].call("connect", t, info=self.hello[de_role]["info"])["peer"]
        self.pe_peer[de_role] = self.clients[de_role].call("connect", t, info=self.hello["pe"]["info"])["peer"]

    def _recover(self) -> None:
        """Replaces every DE process that died by a fresh one in its place (same node); a
        dead PE is fatal: this cluster has only one."""
        if self.procs["pe"].poll() is not None:
            raise PeerDisconnected("the prefill engine process died; no PE is left")
        for role in self.roles[1:]:
            if self.procs[role].poll() is None:
                self.clients[role].call("drop", self.timeout_s)  # buffers of the failed batch
                continue
            self.clients[role].close()
            self.num_restarts += 1
            self._spawn(role)
            self.hello[role] = self.clients[role].call("hello", self.timeout_s)
            self._join(role)

    def match(self, keys: np.ndarray) -> int:
        return next((i for i, k in enumerate(keys) if k.tobytes() not in self.stored), len(keys))

    def run_turn(self, prompt, max_new_tokens: int) -> ClusterTurn:
        return self.run_batch([(prompt, max_new_tokens)])[0]

    def run_batch(self, turns, max_retries: int = 2) -> list[ClusterTurn]:
        """Runs (prompt, max_new_tokens) turns of different conversations as one batch.

        Requests caught by a DE process dying are placed again (the scheduler may pick any
        DE; the dead one is replaced) and recomputed from what the store holds."""
        requests = [self._submit(np.asarray(p, np.int32), n) for p, n in turns]
        done = self._execute(requests)
        for node in range(len(self.roles)):  # every read of the batch has finished
            self.sched.report_read_q(node, 0)
        failed = [i for i, r in enumerate(requests) if r.rid not in done]
        if failed:
            if max_retries <= 0:
                raise PeerDisconnected(f"{len(failed)} requests failed after every retry")
            self._recover()
            retried = self.run_batch([turns[i] for i in failed], max_retries - 1)
            done.update({requests[i].rid: turn for i, turn in zip(failed, retried)})
        return [done[r.rid] for r in requests]

    def _execute(self, requests) -> dict:
        """{rid: ClusterTurn} of the requests that finished; a dead DE fails its requests."""
        start = time.monotonic()
        placed = self._place(len(requests))
        try:
            opened = self._open(placed)
            firsts = self.clients["pe"].call("prefill", self.timeout_s, mode=self.mode, requests=[
                self._prefill_request(r, opened[r.rid]) for r in placed])["results"]
        except PeerDisconnected:
            return {}
        first_at = time.monotonic()
        for f in firsts:
            f["ttft_s"] = first_at - start
        by_rid = {r.rid: (r, f) for r, f in zip(placed, firsts)}
        self._decode(by_rid)
        return {rid: self._result(r, f) for rid, (r, f) in by_rid.items() if "generated" in f}

    def _submit(self, prompt, max_new_tokens) -> Request:
        self._rid += 1
        keys = chain_keys(prompt, self.block_tokens)
        matched = self.match(keys)
        hit = min(matched * self.block_tokens, (len(prompt) - 1) // self.block_tokens * self.block_tokens)
        request = Request(self._rid, len(prompt), hit, max_new_tokens,
                          tag={"prompt": prompt, "keys": keys, "matched": matched})
        self.sched.submit(request)
        return request

    def _place(self, count: int) -> list[Request]:
        placed = []
        for _ in range(100):  # every fetch places something while requests wait
            placed += self.sched.fetch_for_pe_group(GroupReport(0, 0, [EngineReport(0, 0, 0)])).placed
            for gid in range(1, len(self.roles)):
                report = GroupReport(gid, 0, [EngineReport(gid, 0, 0)])
                placed += self.sched.fetch_for_de_group(report).placed
            if len(placed) == count:
                return placed
        raise InvalidArgument(f"the scheduler placed {len(placed)} of {count} requests")

    def _de_role(self, request: Request) -> str:
        return f"de{request.de - 1}"

    def _open(self, placed) -> dict:
        opened, recv_offset = {}, 0
        layout = self.cfg.layout(self.block_tokens)
        for r in placed:
            role, tag = self._de_role(r), r.tag
            opened[r.rid] = self.clients[role].call(
                "open", self.timeout_s, rid=r.rid, num_tokens=r.prompt_tokens,
                hit_keys=tag["keys"][:r.hit_tokens // self.block_tokens].tobytes(),
                read_side=r.read_side, pe_peer=self.pe_peer[role],
                pe_recv_region=self.hello["pe"]["recv_region"], pe_recv_offset=recv_offset)
            opened[r.rid]["recv_offset"] = recv_offset
            recv_offset += layout.num_layers * opened[r.rid]["num_hit_blocks"] * layout.layer_block_bytes
        return opened

    def _prefill_request(self, r: Request, opened: dict) -> dict:
        role = self._de_role(r)
        return dict(rid=r.rid, prompt=r.tag["prompt"].tolist(), read_side=r.read_side,
                    hit_keys=r.tag["keys"][:r.hit_tokens // self.block_tokens].tobytes(),
                    num_hit_blocks=opened["num_hit_blocks"], recv_offset=opened["recv_offset"],
                    ready_at=opened["ready_at"],
                    de_peer=self.de_peer[role], de_region=self.hello[role]["pool_region"],
                    slot_offsets=opened["slot_offsets"])

    def _decode(self, by_rid: dict) -> None:
        per_de = {}
        for rid, (r, first) in by_rid.items():
            cached = first["num_cached_blocks"]
            per_de.setdefault(self._de_role(r), []).append(dict(
                rid=rid, prompt=r.tag["prompt"].tolist(), first_token=first["first_token"],
                max_new_tokens=r.gen_tokens, num_cached_blocks=cached,
                prior_key=r.tag["keys"][cached - 1].tobytes() if cached else b"",
                pe_peer=self.pe_peer[self._de_role(r)]))
        first_at = time.monotonic()
        for role, reqs in per_de.items():  # every DE decodes at once
            self.clients[role].send("decode", requests=reqs)
        for role in per_de:
            try:
                outs = self.clients[role].recv(self.timeout_s)["results"]
            except PeerDisconnected:
                continue  # its requests stay without "generated": run_batch retries them
            done_at = time.monotonic()
            for out in outs:
                r, first = by_rid[out["rid"]]
                first["generated"] = out["generated"]
                first["decode_s"] = done_at - first_at
                seq = np.concatenate([r.tag["prompt"], np.asarray(out["generated"], np.int32)])
                written = chain_keys(seq, self.block_tokens)[:out["num_written_blocks"]]
                self.stored.update(k.tobytes() for k in written)

    def _result(self, r: Request, first: dict) -> ClusterTurn:
        return ClusterTurn(first["generated"], r.tag["matched"], first["num_cached_blocks"],
                           r.de - 1, r.read_side, first["ttft_s"], first["decode_s"])

    def snic_bytes(self) -> dict:
        """Bytes each node's emulated storage NIC has read, by role."""
        return {role: self.clients[role].call("stats", self.timeout_s)["snic_bytes"]
                for role in self.roles}

    def close(self) -> None:
        for role, client in self.clients.items():
            try:
                client.call("stop", 10.0)
            except Exception:
                self.procs[role].kill()
            client.close()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
