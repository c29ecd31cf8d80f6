"""A local cluster of engine processes: one PE and one DE process sharing a block directory,
joined by UCX (KV) and ZeroMQ + msgpack (control), driven turn by turn from this process.

The driver owns the prefix view (which chain keys are stored): engine processes each open
their own `BlockStore` on the shared directory, and a store's index sees only the blocks its
own process wrote, so the DE reports what it wrote back and the driver matches against that.
Scheduling over many engines (`dualkv.sched`) is the next layer on top of this one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import zmq

from dualkv.cluster.protocol import Client
from dualkv.engine.config import ModelConfig
from dualkv.keys import chain_keys


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


class LocalCluster:
    def __init__(self, cfg: ModelConfig, root: str, seed: int = 0, block_tokens: int = 64,
                 batch_invariant: bool = True, timeout_s: float = 120.0):
        self.block_tokens, self.timeout_s = block_tokens, timeout_s
        self.stored: set[bytes] = set()
        self._rid = 0
        self._dir = tempfile.mkdtemp(prefix="dualkv-cluster-")
        spec = json.dumps({"config": asdict(cfg), "seed": seed, "batch_invariant": batch_invariant})
        self.procs, self.clients, self.hello = {}, {}, {}
        context = zmq.Context.instance()
        for role in ("pe", "de"):
            endpoint = f"ipc://{self._dir}/{role}.sock"
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-m", "dualkv.cluster.engine_proc", "--role", role,
                 "--endpoint", endpoint, "--root", root, "--model", spec,
                 "--block-tokens", str(block_tokens)], env=_child_env())
            self.clients[role] = Client(context, endpoint)
        for role in ("pe", "de"):
            self.hello[role] = self.clients[role].call("hello", timeout_s)
        self.de_peer = self.clients["pe"].call("connect", timeout_s, info=self.hello["de"]["info"])["peer"]
        self.pe_peer = self.clients["de"].call("connect", timeout_s, info=self.hello["pe"]["info"])["peer"]

    def match(self, keys: np.ndarray) -> int:
        return next((i for i, k in enumerate(keys) if k.tobytes() not in self.stored), len(keys))

    def run_turn(self, prompt, max_new_tokens: int, read_side: str = "pe") -> ClusterTurn:
        prompt = np.asarray(prompt, np.int32)
        self._rid += 1
        rid, pe, de, t = self._rid, self.clients["pe"], self.clients["de"], self.timeout_s
        keys = chain_keys(prompt, self.block_tokens)
        num_matched = self.match(keys)
        hit_keys = keys[:num_matched].tobytes()
        opened = de.call("open", t, rid=rid, num_tokens=len(prompt), hit_keys=hit_keys,
                         read_side=read_side, pe_peer=self.pe_peer,
                         pe_recv_region=self.hello["pe"]["recv_region"])
        pre = pe.call("prefill", t, rid=rid, prompt=prompt.tolist(), read_side=read_side,
                      hit_keys=hit_keys, num_hit_blocks=opened["num_hit_blocks"],
                      de_peer=self.de_peer, de_region=self.hello["de"]["pool_region"],
                      slot_offsets=opened["slot_offsets"])
        cached = pre["num_cached_blocks"]
        prior = keys[cached - 1].tobytes() if cached else b""
        out = de.call("decode", t, rid=rid, prompt=prompt.tolist(), first_token=pre["first_token"],
                      max_new_tokens=max_new_tokens, num_cached_blocks=cached, prior_key=prior,
                      pe_peer=self.pe_peer)
        seq = np.concatenate([prompt, np.asarray(out["generated"], np.int32)])
        written = chain_keys(seq, self.block_tokens)[:out["num_written_blocks"]]
        self.stored.update(k.tobytes() for k in written)
        return ClusterTurn(out["generated"], num_matched, cached)

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
