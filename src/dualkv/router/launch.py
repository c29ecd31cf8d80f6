"""Starts a set of vLLM prefill and decode instances on this machine (`--launch-local 1p2d`).

Each instance is `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script
fails on some CPU builds; the module always works) with `DualKVConnector` in its role, all on
one block directory and one cluster token, on consecutive ports. Each one is its own emulated
node (`traffic_node`), so its storage reads and pulls pay its own NIC buckets. The same lines,
with real host names, start a multi-machine deployment (docs/vllm-pd.md).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from dualkv.errors import InvalidArgument


def parse_shape(shape: str) -> tuple[int, int]:
    """'1p2d' -> (1, 2)."""
    match = re.fullmatch(r"(\d+)p(\d+)d", shape.strip().lower())
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise InvalidArgument(f"instance set {shape!r}: write it as NpMd with N, M >= 1 (e.g. 1p2d)")
    return int(match.group(1)), int(match.group(2))


@dataclass
class LocalSet:
    shape: str                       # "1p2d"
    model: str                       # model directory or name
    root: str                        # the shared block directory
    token: str                       # cluster token (DUALKV_CLUSTER_TOKEN)
    log_dir: str
    base_port: int = 8100            # instance i listens on base_port + i
    python: str = sys.executable     # the interpreter with vLLM installed
    vllm_args: list[str] = field(default_factory=list)   # added to every instance's line
    extra_config: dict = field(default_factory=dict)     # kv_connector_extra_config additions
    node_prefix: str = ""            # emulated node names: <prefix>p0, <prefix>d0, ...
    start_timeout_s: float = 600.0
    procs: list[subprocess.Popen] = field(default_factory=list, init=False)

    def __post_init__(self):
        self.num_prefill, self.num_decode = parse_shape(self.shape)
        if not self.token:
            raise InvalidArgument("a cluster token is needed (--token or DUALKV_CLUSTER_TOKEN)")
        self.names = ([f"p{i}" for i in range(self.num_prefill)] +
                      [f"d{i}" for i in range(self.num_decode)])
        self.node_prefix = self.node_prefix or f"vllm{self.base_port}-"

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.base_port + index}"

    @property
    def prefill_urls(self) -> list[str]:
        return [self.url(i) for i in range(self.num_prefill)]

    @property
    def decode_urls(self) -> list[str]:
        return [self.url(self.num_prefill + i) for i in range(self.num_decode)]

    def node(self, name: str) -> str:
        return self.node_prefix + name

    def command(self, index: int) -> list[str]:
        name = self.names[index]
        role = "kv_producer" if name.startswith("p") else "kv_consumer"
        extra = {"root": self.root, "rendezvous_host": "127.0.0.1",
                 "traffic_node": self.node(name), **self.extra_config}
        # store reads between an instance's steps: a prefill batch never waits on another
        # request's read (paper.md: hits go to the node's buffer while the engine computes),
        # nor does a decode instance's decode batch on the DualPath hits it reads
        extra.setdefault("async_load", True)
        kv_config = {"kv_connector": "DualKVConnector",
                     "kv_connector_module_path": "dualkv.integrations.vllm",
                     "kv_role": role, "kv_load_failure_policy": "recompute",
                     "kv_connector_extra_config": extra}
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--host", "127.0.0.1", "--port", str(self.base_port + index),
                "--kv-transfer-config", json.dumps(kv_config), *self.vllm_args]

    def env(self) -> dict:
        env = dict(os.environ, DUALKV_CLUSTER_TOKEN=self.token)
        env.setdefault("PYTHONHASHSEED", "0")  # block hashes (store keys) agree across instances
        # vLLM's CPU build pins every instance's worker to the same core ("auto" binding picks
        # per NUMA node, not per process): instances on one machine would share one core and
        # starve each other's transfer threads. Their own threads on all cores instead.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        return env

    def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        env = self.env()
        for index, name in enumerate(self.names):
            log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
            log.write("$ " + shlex.join(self.command(index)) + "\n")
            log.flush()
            self.procs.append(subprocess.Popen(self.command(index), env=env, stdout=log,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        waiting = set(range(len(self.names)))
        while waiting:
            for index in list(waiting):
                if self.procs[index].poll() is not None:
                    raise RuntimeError(f"instance {self.names[index]} exited with "
                                       f"{self.procs[index].returncode} while starting:\n"
                                       f"{self.log_tail(index)}")
                try:
                    with urllib.request.urlopen(self.url(index) + "/health", timeout=2) as r:
                        if r.status == 200:
                            waiting.discard(index)
                except OSError:
                    pass
            if waiting and time.monotonic() > deadline:
                names = ", ".join(self.names[i] for i in sorted(waiting))
                raise TimeoutError(f"instances {names} not ready within {self.start_timeout_s} s; "
                                   f"logs in {self.log_dir}")
            time.sleep(0.5)

    def log_tail(self, index: int, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.log_dir, f"{self.names[index]}.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kills one instance (its whole process group: vLLM's engine core is a child)."""
        proc = self.procs[self.names.index(name)]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        self.procs = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
