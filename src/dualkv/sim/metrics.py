"""Byte accounting over time windows, and the summaries the simulator reports.

Storage-NIC reads are spread over the read's duration, per node. Compute-NIC and DRAM bytes
(paper.md §6 table) are summed per node class (PE, DE) per window at the end of the request's
prefill. CNIC and DRAM are accounted, not queued (paper.md §16.1): a utilisation above 1
means the link would be a bottleneck, which is exactly the §6 bound test.
"""
from __future__ import annotations

from array import array

import numpy as np

# class channels, in tokens (multiplied by bytes per token when summarised)
PE_CNIC_RD, PE_CNIC_WR, DE_CNIC_RD, DE_CNIC_WR, PE_DRAM, DE_DRAM = range(6)
CHANNELS = ("pe_cnic_read", "pe_cnic_write", "de_cnic_read", "de_cnic_write", "pe_dram", "de_dram")


def path_tokens(side: str, hit: int, miss: int) -> tuple:
    """Per-request tokens over each channel, following the steps of paper.md §3.1/§3.2."""
    full = hit + miss
    if side == "pe":  # steps 3,5 | 4 | 8 | 7,9 | 2,3 | 7,8
        return (hit + full, hit, full, 2 * full, 2 * hit, 2 * full)
    # DE path: PE reads only the miss back out; the DE buffer holds hit, then hit + miss
    return (miss, hit, hit + full, miss + full, 0, 2 * hit + miss + full)


def split_path_tokens(pe_hit: int, de_hit: int, miss: int) -> tuple:
    """path_tokens of a split read: the PE node reads pe_hit tokens (they travel as on the PE
    path), the DE node de_hit (as on the DE path). Every channel above is linear in the hit
    for a fixed prompt, so the split is the PE path's terms for pe_hit plus the DE path's for
    de_hit; pe_hit = 0 or de_hit = 0 gives path_tokens exactly (tests/sim/test_split_sim.py)."""
    full = pe_hit + de_hit + miss
    return (2 * pe_hit + miss, pe_hit + de_hit, de_hit + full, 2 * full - de_hit, 2 * pe_hit,
            2 * full + de_hit)


class Series:
    """A growable column of doubles (one figure per turn or per forward): a 'd' array, a C
    memoryview once compiled (metrics.pxd), so appending is a C store, not a boxed float in a
    list. np.asarray(series) is a view of the values, len() and indexing work as on a list."""

    def __init__(self, capacity: int = 1024):
        self._buf = array("d", [0.0]) * max(1, capacity)
        self.size = 0

    def append(self, value: float) -> None:
        if self.size == len(self._buf):
            self._grow()
        self._buf[self.size] = value
        self.size += 1

    def _grow(self) -> None:
        """Doubles the capacity. Apart from append: compiled, a function with memoryview
        temporaries zeroes them (~200 bytes each) on every call, growing or not."""
        grown = array("d", [0.0]) * (2 * self.size)
        grown[: self.size] = self._buf[: self.size]
        self._buf = grown

    def __len__(self) -> int:
        return self.size

    def __array__(self, dtype=None, copy=None):
        values = np.frombuffer(self._buf, dtype=np.float64, count=self.size)
        return values if dtype is None else values.astype(dtype)

    def __getitem__(self, i):
        return np.asarray(self)[i]

    def __iter__(self):
        return iter(np.asarray(self).tolist())


class Accounting:
    def __init__(self, num_nodes: int, window_s: float):
        self.window_s = window_s
        self.snic = np.zeros((64, num_nodes))  # read tokens per window per node
        self._snic_view = self.snic  # typed view once compiled (metrics.pxd): C-speed adds
        # per window: tokens per class channel, as doubles (exact: sums of integers < 2**53)
        self.cls = np.zeros((64, len(CHANNELS)))
        self._cls_view = self.cls
        self.snic_write = np.zeros(num_nodes)  # write-back tokens per node
        self._write_view = self.snic_write  # typed once compiled: add_write is a C add
        self.num_windows = 0
        self._cls_rows = 0  # windows add_class has written to

    def _grow(self, w: int) -> None:
        """Room for window w in snic (called only when it lacks it: compiled, this function's
        memoryview temporary is zeroed on every call)."""
        size = max(w + 1, 2 * len(self.snic))
        self.snic = np.resize(self.snic, (size, self.snic.shape[1]))
        self.snic[self.num_windows:] = 0
        self._snic_view = self.snic

    def add_read(self, node: int, t0: float, t1: float, tokens: float) -> None:
        W = self.window_s
        w0, w1 = int(t0 / W), int(t1 / W)
        if w1 >= self._snic_view.shape[0]:
            self._grow(w1)
        self.num_windows = max(self.num_windows, w1 + 1)
        # the typed field is indexed in place: a memoryview local costs a reference count (an
        # atomic add) and a zeroed temporary per call
        if w0 == w1:
            self._snic_view[w0, node] += tokens
            return
        rate = tokens / (t1 - t0)
        for w in range(w0, w1 + 1):
            self._snic_view[w, node] += rate * (min(t1, (w + 1) * W) - max(t0, w * W))

    def add_write(self, node: int, tokens: float) -> None:
        self._write_view[node] += tokens

    def add_class(self, t: float, tokens: tuple) -> None:
        """Adds the six channels' tokens (path_tokens' order) to the window of time t.
        Compiled, `tokens` is a C tuple: no tuple or int objects per call."""
        w = int(t / self.window_s)
        if w >= self._cls_view.shape[0]:
            self._grow_cls(w)
        self._cls_rows = max(self._cls_rows, w + 1)
        # the typed field is indexed in place, and the growth is a function of its own (see
        # add_read, _grow)
        self._cls_view[w, 0] += tokens[0]
        self._cls_view[w, 1] += tokens[1]
        self._cls_view[w, 2] += tokens[2]
        self._cls_view[w, 3] += tokens[3]
        self._cls_view[w, 4] += tokens[4]
        self._cls_view[w, 5] += tokens[5]

    def _grow_cls(self, w: int) -> None:
        self.cls = np.resize(self.cls, (max(w + 1, 2 * len(self.cls)), len(CHANNELS)))
        self.cls[self._cls_rows:] = 0
        self._cls_view = self.cls

    def class_array(self) -> np.ndarray:
        """Tokens per class channel for each of the num_windows windows (zeros past the last
        window a request finished in)."""
        out = np.zeros((self.num_windows, len(CHANNELS)))
        rows = min(self.num_windows, self._cls_rows)
        out[:rows] = self.cls[:rows]
        return out


def saturated_windows(snic: np.ndarray, frac: float = 0.9) -> np.ndarray:
    """Windows whose total storage read is within `frac` of the busiest window: where the
    storage NICs run saturated, the §6 assumption."""
    total = snic.sum(axis=1)
    if total.max() <= 0:
        return np.arange(len(total))
    return np.flatnonzero(total >= frac * total.max())


def percentiles(values, prefix: str, unit_scale: float = 1.0, unit: str = "s") -> dict:
    if len(values) == 0:
        return {f"{prefix}_mean_{unit}": None, f"{prefix}_p50_{unit}": None,
                f"{prefix}_p90_{unit}": None, f"{prefix}_p99_{unit}": None}
    v = np.asarray(values) * unit_scale
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {f"{prefix}_mean_{unit}": float(v.mean()), f"{prefix}_p50_{unit}": float(p50),
            f"{prefix}_p90_{unit}": float(p90), f"{prefix}_p99_{unit}": float(p99)}
