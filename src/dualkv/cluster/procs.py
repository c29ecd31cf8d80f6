"""The processes of a local cluster: the scheduler process and the engine processes, their
control sockets, the UCX rendezvous between the PE and every DE, and the replacement of a DE
that died. Engine id = node id: 0 the PE, 1.. the DEs (roles "pe", "de0", "de1", ...).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import zmq

from dualkv.cluster.protocol import Client
from dualkv.errors import PeerDisconnected


def _child_env() -> dict:
    """This process's environment, with the dualkv package it imported first on the path."""
    import dualkv

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(dualkv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class ClusterProcs:
    def __init__(self, num_de: int, policy: str, engine_argv: list[str], timeout_s: float,
                 de_argv: list[str] = ()):
        self.timeout_s, self.engine_argv, self.de_argv = timeout_s, engine_argv, list(de_argv)
        self._dir = tempfile.mkdtemp(prefix="dualkv-cluster-")
        self.roles = ["pe"] + [f"de{i}" for i in range(num_de)]
        self.procs, self.clients, self.hello, self.de_peer, self.pe_peer = {}, {}, {}, {}, {}
        self.num_restarts = 0
        self.reports_endpoint = f"ipc://{self._dir}/sched-reports.sock"
        self._spawn_scheduler(policy, num_de)
        for role in self.roles:
            self._spawn(role)
        for role in self.roles:
            self.hello[role] = self.clients[role].call("hello", timeout_s)
        for role in self.roles[1:]:
            self._join(role)

    def __getitem__(self, role: str):
        """The process of a role ("sched", "pe", "de0", ...)."""
        return self.procs[role]

    def engine_id(self, role: str) -> int:
        return self.roles.index(role)

    def _spawn_scheduler(self, policy: str, num_de: int) -> None:
        endpoint = f"ipc://{self._dir}/sched.sock"
        proc = self.procs["sched"] = subprocess.Popen(
            [sys.executable, "-m", "dualkv.cluster.sched_proc", "--endpoint", endpoint,
             "--reports", self.reports_endpoint, "--policy", policy, "--num-pe", "1",
             "--num-de", str(num_de)], env=_child_env())
        self.sched = Client(zmq.Context.instance(), endpoint, is_alive=lambda: proc.poll() is None)

    def _spawn(self, role: str) -> None:
        endpoint = f"ipc://{self._dir}/{role}-{self.num_restarts}.sock"
        argv = [sys.executable, "-m", "dualkv.cluster.engine_proc", "--role", role[:2],
                "--endpoint", endpoint, "--engine-id", str(self.engine_id(role)),
                "--sched-reports", self.reports_endpoint] + self.engine_argv
        proc = self.procs[role] = subprocess.Popen(
            argv + (self.de_argv if role != "pe" else []), env=_child_env())
        self.clients[role] = Client(zmq.Context.instance(), endpoint,
                                    is_alive=lambda: proc.poll() is None)

    def _join(self, de_role: str) -> None:
        """UCX rendezvous of the PE and one DE, both ways."""
        t = self.timeout_s
        self.de_peer[de_role] = self.clients["pe"].call("connect", t, info=self.hello[de_role]["info"])["peer"]
        self.pe_peer[de_role] = self.clients[de_role].call("connect", t, info=self.hello["pe"]["info"])["peer"]

    def is_alive(self, role: str) -> bool:
        return self.procs[role].poll() is None

    def check_pe(self) -> None:
        """A dead PE is fatal: the scheduler stops assigning to it, and no PE is left."""
        if not self.is_alive("pe"):
            self.sched.call("down", self.timeout_s, engine=0)
            proc = self.procs["pe"]
            raise PeerDisconnected(f"the prefill engine process 'pe' (pid {proc.pid}) died "
                                   f"(exit {proc.returncode}); no PE is left to run prefills")

    def replace_de(self, role: str) -> None:
        """A fresh DE process in place of a dead one (same node, same engine id)."""
        engine = self.engine_id(role)
        self.sched.call("down", self.timeout_s, engine=engine)
        self.clients[role].close()
        self.num_restarts += 1
        self._spawn(role)
        self.hello[role] = self.clients[role].call("hello", self.timeout_s)
        self._join(role)
        self.sched.call("up", self.timeout_s, engine=engine)

    def close(self) -> None:
        for role in self.roles:
            try:
                self.clients[role].call("stop", 10.0)
            except Exception:
                self.procs[role].kill()
            self.clients[role].close()
        try:
            self.sched.call("stop", 10.0)
        except Exception:
            self.procs["sched"].kill()
        self.sched.close()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
