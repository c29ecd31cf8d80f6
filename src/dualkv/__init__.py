"""dualkv: move LLM KV-cache between storage, host memory, accelerators and remote engines
for disaggregated (prefill/decode) inference on agentic, multi-turn workloads (DualPath).

Heavy parts load lazily, so `import dualkv` stays cheap and works without torch.
"""
from dualkv.errors import (DualKVError, InvalidArgument, NotFound, OutOfMemory,
                           PeerDisconnected, StorageError, TimedOut, Unavailable)
from dualkv.layout import KVLayout

__all__ = ["KVLayout", "info", "DualKVError", "InvalidArgument", "NotFound", "OutOfMemory",
           "PeerDisconnected", "StorageError", "TimedOut", "Unavailable"]


def info() -> dict:
    """Which backends this build has and this machine allows (`dualkv info` prints it)."""
    from dualkv.system_info import info as _info

    return _info()
