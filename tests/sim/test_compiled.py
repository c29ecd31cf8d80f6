"""The compiled simulator and scheduler (the .py modules with a .pxd, built by setup.py) take
exactly the decisions of their pure-Python sources: the same run gives the same numbers."""
import json
import subprocess
import sys

import pytest

import dualkv.sim.simulator

# Runs one small offline simulation and prints its figures. With "pure", a meta-path finder
# loads every dualkv module from its .py source, so no compiled extension shadows it.
SCRIPT = r"""
import importlib.machinery, importlib.util, json, pathlib, sys

class SourceOnly:
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("dualkv.") or path is None:
            return None
        leaf = name.rpartition(".")[2]
        for folder in path:
            source = pathlib.Path(folder, leaf + ".py")
            if source.exists():
                return importlib.util.spec_from_file_location(name, source)
        return None

if sys.argv[1] == "pure":
    sys.meta_path.insert(0, SourceOnly())

from dualkv.sim.config import SimConfig, get_preset
from dualkv.sim.run import run_offline
from dualkv.sim.workload import agentic
import dualkv.sim.simulator as simulator, dualkv.sched.inter as inter

out = {"compiled": [not m.__file__.endswith(".py") for m in (simulator, inter)]}
for policy in ("basic", "dualpath"):
    row, _ = run_offline(SimConfig(get_preset("ds660b"), policy, 2, 4), agentic("32k", 96))
    out[policy] = row
print(json.dumps(out))
"""


def run(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(dualkv.sim.simulator.__file__.endswith(".py"), reason="not built")
def test_compiled_equals_pure_python():
    compiled, pure = run("compiled"), run("pure")
    assert compiled.pop("compiled") == [True, True] and pure.pop("compiled") == [False, False]
    assert compiled == pure
