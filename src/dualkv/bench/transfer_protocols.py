"""Which protocol UCX runs dualkv's one-sided puts with: a child process makes two agents
joined over the given transports, puts one message, and UCX prints its protocol tables
(UCX_PROTO_INFO=y; 1.13 prints them on stderr, 1.22 on stdout); `put_protocols` reads the
rows of the "remote memory write by ucp_put" table. `dualkv bench transfer --peers` records
it next to its figures, and the zero-copy test checks it.

Rows are (size range, description, transports), e.g. ("0..inf", "zero-copy", "tcp/lo") or
("0..inf", "software emulation", "tcp/lo")."""
from __future__ import annotations

import os
import re
import subprocess
import sys

_CHILD = r"""
import ctypes, sys
from dualkv._native import C  # loads the UCX this process will use
from dualkv.transfer import Agent, TransferConfig
tls, size, opts = sys.argv[1] or None, int(sys.argv[2]), tuple(
    tuple(o.split("=", 1)) for o in sys.argv[3:])
ver = [ctypes.c_uint() for _ in range(3)]
ctypes.CDLL("libucp.so.0").ucp_get_version(*[ctypes.byref(v) for v in ver])
print("UCX_VERSION %d.%d.%d" % tuple(v.value for v in ver), file=sys.stderr, flush=True)
cfg = TransferConfig(tls=tls, ucx_options=opts)
a, b = Agent(cfg), Agent(cfg)
ra, _ = a.alloc(size)
rb, _ = b.alloc(size)
peer = a.connect(b.local_info())
b.connect(a.local_info())
h = a.put(peer, ra, rb.id, [0], [0], [size])
a.wait(h, 30)
a.release(h)
a.close()
b.close()
"""
_ROW = re.compile(r"\|\s*([0-9][0-9KMGinf.]*\.\.[0-9KMGinf]+)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")


def probe(tls: str | None, size: int = 1 << 20, ucx_options: dict | None = None,
          timeout_s: float = 60) -> dict:
    """{"ucx_version": "1.22.0", "put_protocols": [rows]} of one put between two agents."""
    env = dict(os.environ, UCX_PROTO_INFO="y", UCX_PROTO_ENABLE="y")
    opts = [f"{k}={v}" for k, v in (ucx_options or {}).items()]
    proc = subprocess.run([sys.executable, "-c", _CHILD, tls or "", str(size), *opts], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"UCX protocol probe failed ({proc.returncode}): "
                           + "\n".join(proc.stdout.splitlines()[-10:]))
    version = re.search(r"UCX_VERSION (\S+)", proc.stdout)
    return {"ucx_version": version.group(1) if version else None,
            "put_protocols": put_protocols(proc.stdout)}


def put_protocols(text: str) -> list[tuple[str, str, str]]:
    """Rows of the first ucp_put table in UCX_PROTO_INFO output (empty if none printed)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "remote memory write by ucp_put" in line and "(multi)" not in line:
            rows = []
            for row_line in lines[i + 1:]:
                match = _ROW.search(row_line)
                if match:
                    rows.append(match.groups())
                elif rows and "+--" in row_line:  # the border under the last row
                    break
            return rows
    return []
