"""Emulated NICs for the connector's bulk reads: the traffic manager's token buckets.

An instance started with `traffic_node` set charges every byte it reads from the store to that
node's storage-NIC bucket and every byte it pulls from another instance (a prompt's KV from a
producer, a DualPath hit from a decode instance) to the node's compute-NIC bucket: the same
shared-memory buckets (`dualkv.transfer.traffic.open_bucket`) that the reference cluster's
`TrafficManager` uses, so processes naming one node share one NIC. The bytes themselves move at
once (they must be correct); a read counts as arrived only when the bucket says its last byte
would have: the layer wait, the request's `finished_recving`, sleep until then. Without
`traffic_node` nothing is paced (and nothing waits).

The bucket's rate is set by whoever opens it last (`snic_gbps` / `cnic_gbps` at start; a bench
may open the same file with another rate between runs; 0 = unpaced).
"""
from __future__ import annotations

import time

from dualkv.errors import TimedOut


class NicPacer:
    def __init__(self, config):
        self.snic = self.cnic = None
        if config.traffic_node:
            from dualkv.transfer.traffic import open_bucket

            self.snic = open_bucket(config.traffic_node, "snic", config.snic_gbps)
            self.cnic = open_bucket(config.traffic_node, "cnic", config.cnic_gbps)

    def storage_read(self, num_bytes: int) -> float:
        """CLOCK_MONOTONIC time at which `num_bytes` read from the store have arrived."""
        return self._reserve(self.snic, num_bytes)

    def network_read(self, num_bytes: int) -> float:
        """The same for bytes pulled from another instance."""
        return self._reserve(self.cnic, num_bytes)

    @staticmethod
    def _reserve(bucket, num_bytes: int) -> float:
        if bucket is None or num_bytes <= 0:
            return 0.0
        return bucket.reserve_until(int(num_bytes))

    @staticmethod
    def wait_until(arrives_at: float, deadline: float) -> None:
        """Sleeps until `arrives_at` (monotonic); TimedOut if that is past `deadline`."""
        left = arrives_at - time.monotonic()
        if left <= 0:
            return
        if arrives_at > deadline:
            raise TimedOut(f"the emulated NIC delivers these bytes in {left:.3f} s, after the "
                           f"deadline")
        time.sleep(left)
