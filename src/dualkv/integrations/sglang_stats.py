"""Counters of the SGLang backend, and what `get_stats()` returns.

SGLang's metrics collector asserts that `get_stats()` gives its `StorageMetrics` (per-batch
page counts and GB/s since the last call, which it drains); dualkv returns a subclass that
also carries the cumulative counters (`as_dict()`).
"""
from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

logger = logging.getLogger("dualkv.integrations.sglang")

MAX_LOGGED_KEYS = 4096


@functools.lru_cache(maxsize=1)
def _storage_metrics_class():
    from sglang.srt.observability.metrics_collector import StorageMetrics

    @dataclass
    class DualKVStorageMetrics(StorageMetrics):
        totals: dict = field(default_factory=dict)

        def as_dict(self) -> dict:
            return dict(self.totals)

    return DualKVStorageMetrics


class PageStats:
    """Thread-safe counters; the controller's backup and prefetch threads both update them."""

    def __init__(self, page_bytes: int = 0):
        self.page_bytes = page_bytes
        self._lock = threading.Lock()
        self._totals = dict(pages_read=0, pages_missed=0, pages_written=0, pages_write_failed=0,
                            bytes_read=0, bytes_written=0, read_seconds=0.0,
                            write_seconds=0.0, exists_calls=0, batches_direct=0,
                            batches_bounce=0, errors=0)
        self._recent = dict(prefetch_pgs=[], backup_pgs=[], prefetch_bandwidth=[],
                            backup_bandwidth=[])
        self._logged: OrderedDict = OrderedDict()
        self.io_path = "none"  # reads: "direct" (O_DIRECT into the pool) or "bounce" (via slots)
        self.store_backend = ""

    def record_read(self, num_hit: int, num_missed: int, seconds: float, is_direct: bool):
        with self._lock:
            t = self._totals
            t["pages_read"] += num_hit
            t["pages_missed"] += num_missed
            t["bytes_read"] += num_hit * self.page_bytes
            t["read_seconds"] += seconds
            self._count_path(is_direct)
            self._recent["prefetch_pgs"].append(num_hit)
            self._recent["prefetch_bandwidth"].append(_gbps(num_hit * self.page_bytes, seconds))

    def record_write(self, num_ok: int, num_failed: int, seconds: float):
        with self._lock:
            t = self._totals
            t["pages_written"] += num_ok
            t["pages_write_failed"] += num_failed
            t["bytes_written"] += num_ok * self.page_bytes
            t["write_seconds"] += seconds
            self._recent["backup_pgs"].append(num_ok)
            self._recent["backup_bandwidth"].append(_gbps(num_ok * self.page_bytes, seconds))

    def record_exists(self):
        with self._lock:
            self._totals["exists_calls"] += 1

    def record_error(self):
        with self._lock:
            self._totals["errors"] += 1

    def _count_path(self, is_direct: bool):
        self.io_path = "direct" if is_direct else "bounce"
        self._totals["batches_direct" if is_direct else "batches_bounce"] += 1

    def log_once(self, what: str, message: str, *args) -> None:
        """Logs a failure the first time it happens for `what` (a page key or an error kind)."""
        with self._lock:
            if what in self._logged:
                return
            self._logged[what] = True
            if len(self._logged) > MAX_LOGGED_KEYS:
                self._logged.popitem(last=False)
        logger.warning(message, *args)

    def totals(self, store_stats: dict | None = None) -> dict:
        with self._lock:
            t = dict(self._totals)
        t["read_gbps"] = _gbps(t["bytes_read"], t["read_seconds"])
        t["write_gbps"] = _gbps(t["bytes_written"], t["write_seconds"])
        t["io_path"] = self.io_path
        t["store_backend"] = self.store_backend
        if store_stats:
            t["pages_corrupt"] = store_stats.get("corrupt", 0)  # dropped, never served
            t["store"] = dict(store_stats)
        return t

    def snapshot(self, store_stats: dict | None = None):
        """SGLang's StorageMetrics (drained since the last call) plus the cumulative totals."""
        with self._lock:
            recent = {k: list(v) for k, v in self._recent.items()}
            for values in self._recent.values():
                values.clear()
        metrics = _storage_metrics_class()(totals=self.totals(store_stats))
        for name, values in recent.items():
            getattr(metrics, name).extend(values)
        return metrics


def _gbps(num_bytes: int, seconds: float) -> float:
    return num_bytes / seconds / 1e9 if seconds > 0 else 0.0
