"""UCX's own messages stay off stdout, which carries every --json command's document (UCX 1.22
logs to stdout by default; dualkv._native points it at stderr before UCX loads)."""
import os
import subprocess
import sys

import pytest

from dualkv._native import C

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")

CHILD = ("from dualkv.transfer import Agent, TransferConfig\n"
         "a = Agent(TransferConfig(tls='tcp')); a.close()\n")


def test_a_ucx_warning_goes_to_stderr_not_stdout():
    env = dict(os.environ, UCX_NOT_AN_OPTION_DUALKV="1")  # UCX warns about unused UCX_* vars
    env.pop("UCX_LOG_FILE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "UCX_NOT_AN_OPTION_DUALKV" in proc.stderr
    assert proc.stdout == ""
