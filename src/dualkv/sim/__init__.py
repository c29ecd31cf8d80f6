"""dualkv.sim: a discrete-event simulator of a DualPath cluster (paper.md §16) that runs the
scheduler objects of dualkv.sched at paper scale.

    from dualkv.sim import SimConfig, get_preset, agentic, run_offline
    row, series = run_offline(SimConfig(get_preset("ds660b"), "dualpath", 2, 4), agentic("64k", 1024))

See docs/simulator.md for the model, the calibration and what each reported figure means.
"""
from dualkv.sim.config import PRESETS, ModelPreset, SimConfig, get_preset
from dualkv.sim.run import capacity_search, run_offline, run_online
from dualkv.sim.simulator import Simulator
from dualkv.sim.workload import Workload, agentic, mooncake

__all__ = ["PRESETS", "ModelPreset", "SimConfig", "get_preset", "capacity_search", "run_offline",
           "run_online", "Simulator", "Workload", "agentic", "mooncake"]
