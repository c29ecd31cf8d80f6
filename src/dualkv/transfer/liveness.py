"""Process identity for peers on the same host, so a dead one is seen at once.

UCX 1.13's shared-memory transports report no dead peer: a SIGKILLed peer's segments stay
mapped, puts into them still "succeed", and only the agent's op_timeout_s would end a wait.
So an agent publishes which process it is (`identity()`), and an agent that connects a peer
on the same host (same boot, same PID namespace) opens a pidfd on it (`open_pidfd()`); the
native progress thread fails the peer with PeerDisconnected the moment that pidfd becomes
readable, i.e. when the process exits. Across hosts UCX's own keepalive does the job.
"""
from __future__ import annotations

import os


def _host_id() -> str:
    """Boot id + PID namespace: two processes with equal ids see the same PIDs."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""  # no /proc: never matches, so no watch (keepalive only)


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/<pid>/stat field 22): a pid that
    was reused by another process has a different one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


_HOST = _host_id()


def identity() -> dict:
    """What local_info() publishes about this process."""
    return {"host": _HOST, "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def open_pidfd(info: dict) -> int | None:
    """A pidfd on the peer's process when it runs on this host, else None. Raises
    ProcessLookupError when that process has exited already (or its pid was reused)."""
    proc = info.get("process")
    if not isinstance(proc, dict) or not _HOST or proc.get("host") != _HOST:
        return None
    pid, start = proc.get("pid"), proc.get("start")
    if type(pid) is not int or pid <= 0 or pid == os.getpid() or not hasattr(os, "pidfd_open"):
        return None  # an agent of this very process cannot die on its own
    fd = os.pidfd_open(pid)  # ProcessLookupError if gone
    if _start_ticks(pid) != start:  # checked after opening: the fd names that very process
        os.close(fd)
        raise ProcessLookupError(f"process {pid} of the peer has exited")
    return fd
