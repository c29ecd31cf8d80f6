"""The processes of a local cluster: the scheduler process and the engine processes, their
control sockets, the UCX rendezvous between every PE and every DE, the replacement of a DE
that died, and the loss of a PE. Engine id = node id: the PEs first, then the DEs (roles "pe"
— or "pe0", "pe1", ... with several — then "de0", "de1", ...).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import zmq

from dualkv.cluster.messages import Connect, Down, Hello, Stop, Up
from dualkv.cluster.protocol import Client
from dualkv.errors import PeerDisconnected


def _is_stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP, SIGTSTP, a debugger): state T or t in /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False  # gone (poll() tells) or no /proc
    return stat[stat.rindex(")") + 2] in "Tt"


def _is_serving(proc: subprocess.Popen) -> bool:
    """Alive and not stopped. A stopped engine would hold its turns until the run's deadline;
    it is killed here and counts as dead from now on, so it is routed around (a DE replaced,
    a PE's turns moved) and can never come back later with stale state."""
    if proc.poll() is not None:
        return False
    if _is_stopped(proc.pid):
        proc.kill()
        proc.wait(10)
        return False
    return True


def _child_env() -> dict:
    """This process's environment, with the dualkv package it imported first on the path."""
    import dualkv

    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(dualkv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class ClusterProcs:
    def __init__(self, num_de: int, policy: str, engine_argv: list[str], timeout_s: float,
                 de_argv: list[str] = (), num_pe: int = 1):
        self.timeout_s, self.engine_argv, self.de_argv = timeout_s, engine_argv, list(de_argv)
        self._dir = tempfile.mkdtemp(prefix="dualkv-cluster-")
        self.pe_roles = ["pe"] if num_pe == 1 else [f"pe{i}" for i in range(num_pe)]
        self.de_roles = [f"de{i}" for i in range(num_de)]
        self.roles = self.pe_roles + self.de_roles
        self.procs, self.clients, self.hello = {}, {}, {}
        self.de_peer, self.pe_peer = {}, {}  # (pe, de) -> the PE's peer id of the DE / DE's of the PE
        self.dead_pes: list[str] = []
        self.num_restarts = 0
        self.reports_endpoint = f"ipc://{self._dir}/sched-reports.sock"
        self._spawn_scheduler(policy, num_pe, num_de)
        for role in self.roles:
            self._spawn(role)
        for role in self.roles:
            self.hello[role] = self.clients[role].call(Hello(), timeout_s)
        for role in self.de_roles:
            self._join(role)

    def __getitem__(self, role: str):
        """The process of a role ("sched", "pe", "de0", ...)."""
        return self.procs[role]

    def engine_id(self, role: str) -> int:
        return self.roles.index(role)

    def _spawn_scheduler(self, policy: str, num_pe: int, num_de: int) -> None:
        endpoint = f"ipc://{self._dir}/sched.sock"
        proc = self.procs["sched"] = subprocess.Popen(
            [sys.executable, "-m", "dualkv.cluster.sched_proc", "--endpoint", endpoint,
             "--reports", self.reports_endpoint, "--policy", policy, "--num-pe", str(num_pe),
             "--num-de", str(num_de)], env=_child_env())
        self.sched = Client(zmq.Context.instance(), endpoint, is_alive=lambda: _is_serving(proc))

    def _spawn(self, role: str) -> None:
        endpoint = f"ipc://{self._dir}/{role}-{self.num_restarts}.sock"
        argv = [sys.executable, "-m", "dualkv.cluster.engine_proc", "--role", role[:2],
                "--endpoint", endpoint, "--engine-id", str(self.engine_id(role)),
                "--node", role, "--shm-dir", self._dir,  # this node's NIC buckets
                "--sched-reports", self.reports_endpoint] + self.engine_argv
        proc = self.procs[role] = subprocess.Popen(
            argv + (self.de_argv if role in self.de_roles else []), env=_child_env())
        self.clients[role] = Client(zmq.Context.instance(), endpoint,
                                    is_alive=lambda: _is_serving(proc))

    def live_pes(self) -> list[str]:
        return [r for r in self.pe_roles if r not in self.dead_pes]

    def _join(self, de: str) -> None:
        """UCX rendezvous of every live PE and one DE, both ways."""
        t = self.timeout_s
        for pe in self.live_pes():
            self.de_peer[pe, de] = self.clients[pe].call(Connect(info=self.hello[de].info), t).peer
            self.pe_peer[pe, de] = self.clients[de].call(Connect(info=self.hello[pe].info), t).peer

    def is_alive(self, role: str) -> bool:
        """Running and not stopped (a stopped one is killed: see _is_serving)."""
        return _is_serving(self.procs[role])

    def stopped_des(self) -> list[str]:
        """DEs found stopped or dead now (checked every pass of the driver: a stopped DE
        that holds no turn would otherwise be found only by the PE waiting on it)."""
        return [r for r in self.de_roles if not self.is_alive(r)]

    def check_pes(self) -> list[str]:
        """PEs found dead now: the scheduler stops assigning to them; the run goes on with
        the rest, and fails naming them when no PE is left. Returns the newly dead."""
        dead = [r for r in self.live_pes() if not self.is_alive(r)]
        for role in dead:
            self.sched.call(Down(engine=self.engine_id(role)), self.timeout_s)
            self.dead_pes.append(role)
        if not self.live_pes():
            names = ", ".join(f"'{r}' (pid {self.procs[r].pid}, exit {self.procs[r].returncode})"
                              for r in self.dead_pes)
            raise PeerDisconnected(f"the prefill engine process {names} died; no PE is left "
                                   "to run prefills")
        return dead

    def replace_de(self, role: str) -> None:
        """A fresh DE process in place of a dead one (same node, same engine id)."""
        engine = self.engine_id(role)
        self.sched.call(Down(engine=engine), self.timeout_s)
        self.clients[role].close()
        self.num_restarts += 1
        self._spawn(role)
        self.hello[role] = self.clients[role].call(Hello(), self.timeout_s)
        self._join(role)
        self.sched.call(Up(engine=engine), self.timeout_s)

    def close(self) -> None:
        for role in self.roles:
            if role in self.dead_pes:
                self.clients[role].close()
                continue
            try:
                self.clients[role].call(Stop(), 10.0)
            except Exception:
                self.procs[role].kill()
            self.clients[role].close()
        try:
            self.sched.call(Stop(), 10.0)
        except Exception:
            self.procs["sched"].kill()
        self.sched.close()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
