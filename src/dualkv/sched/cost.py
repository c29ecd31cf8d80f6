"""Predicted prefill attention cost: theoretical FLOPs of a (cached, bsz) chunk, and the
caller's FLOP -> seconds curve (profiled on real hardware, or modelled in the simulator)."""
from __future__ import annotations

from array import array
from dataclasses import dataclass

from dualkv.errors import InvalidArgument


class FlopCurve:
    """Seconds for a batch of `flops`, piecewise linear through profiled (flops, seconds)
    points, extended past the last point with the last segment's slope. Must be increasing."""

    def __init__(self, flops: list[float], seconds: list[float]):
        if len(flops) < 2 or len(flops) != len(seconds):
            raise InvalidArgument("a FLOP curve needs at least two (flops, seconds) points")
        if any(b <= a for a, b in zip(flops, flops[1:])) or any(b < a for a, b in zip(seconds, seconds[1:])):
            raise InvalidArgument("FLOP curve points must be increasing")
        # the points as doubles ('d' arrays, C memoryviews once compiled: cost.pxd), so
        # seconds_for compares C doubles instead of boxing a float at every comparison
        self._xs, self._ys = array("d", map(float, flops)), array("d", map(float, seconds))

    @property
    def flops(self) -> list[float]:
        return list(self._xs)

    @property
    def seconds(self) -> list[float]:
        return list(self._ys)

    @classmethod
    def linear(cls, flops_per_s: float, overhead_s: float = 0.0) -> "FlopCurve":
        if not flops_per_s > 0 or overhead_s < 0:
            raise InvalidArgument("need flops_per_s > 0 and overhead_s >= 0")
        return cls([0.0, flops_per_s], [overhead_s, overhead_s + 1.0])

    def __call__(self, flops: float) -> float:
        return self.seconds_for(flops)

    def seconds_for(self, flops: float) -> float:
        # the segment: the last point at or below flops, clamped to the first and last
        # segments (a scan: curves have a handful of points, and compiled it is C compares;
        # the fields are read in place: a memoryview local costs a reference count each call)
        i, last = 0, len(self._xs) - 2
        while i < last and self._xs[i + 1] <= flops:
            i += 1
        slope = (self._ys[i + 1] - self._ys[i]) / (self._xs[i + 1] - self._xs[i])
        return self._ys[i] + (flops - self._xs[i]) * slope


@dataclass(frozen=True)
class AttentionFlops:
    """FLOPs of prefill attention for `bsz` new tokens after `cached` ones, all layers.

    Dense (GQA): every new token attends to all earlier tokens. Sparse (DSA): it attends to
    min(position, topk) tokens, plus a lightning indexer that scores every earlier token."""

    num_layers: int
    flops_per_pair: float  # attention FLOPs per (query, key) pair per layer
    topk: int = 0  # 0 = dense
    index_flops_per_pair: float = 0.0

    def __post_init__(self):
        if self.num_layers < 1 or self.flops_per_pair <= 0 or self.topk < 0 or self.index_flops_per_pair < 0:
            raise InvalidArgument(f"bad attention shape {self}")

    def __call__(self, cached: int, bsz: int) -> float:
        return attention_flops(self.num_layers, self.flops_per_pair, self.topk,
                               self.index_flops_per_pair, cached, bsz)


def attention_flops(num_layers: int, flops_per_pair: float, topk: int, index_flops_per_pair: float,
                    cached: int, bsz: int) -> float:
    """AttentionFlops(num_layers, flops_per_pair, topk, index_flops_per_pair)(cached, bsz), as a
    function with C types in cost.pxd: the batcher's binary search calls it ~15 times a chunk."""
    # positions of the new tokens: cached+1 .. cached+bsz (causal, itself included)
    all_pairs = bsz * cached + bsz * (bsz + 1) / 2
    if topk:
        dense_part = max(0, min(cached + bsz, topk) - cached)  # new tokens below topk
        pairs = dense_part * cached + dense_part * (dense_part + 1) / 2 + (bsz - dense_part) * topk
    else:
        pairs = all_pairs
    return num_layers * (pairs * flops_per_pair + all_pairs * index_flops_per_pair)
