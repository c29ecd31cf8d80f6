"""The local multi-process cluster (issue 5): a scheduler process (dualkv.sched, unchanged), a
PE process and DE processes joined by the transfer engine (KV) and ZeroMQ + typed messages
(control: messages.py, msgspec Structs over msgpack), sharing one block directory.
`LocalCluster` (local.py) is the driver: `run_batch` for turns submitted together,
`run_sessions` for conversations arriving over time (runner.py)."""
