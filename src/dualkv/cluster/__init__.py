"""The local multi-process cluster (issue 5): a scheduler process (dualkv.sched, unchanged), a
PE process and DE processes joined by the transfer engine (KV) and ZeroMQ + msgpack (control),
sharing one block directory. `LocalCluster` (local.py) is the driver: `run_batch` for turns
submitted together, `run_sessions` for conversations arriving over time (runner.py)."""
