"""Intra-engine batching on a PE (paper.md §8.5): fill the batch in FIFO order while the
predicted attention time stays within the compute quota; chunk the request that overflows to
the largest number of tokens that still fits (binary search)."""
from __future__ import annotations

from collections import deque
from typing import Callable

from dualkv.errors import InvalidArgument
from dualkv.sched.cost import AttentionFlops, FlopCurve, attention_flops
from dualkv.sched.request import Request


class Chunk:
    """One request's share of a batch. A plain class (compiled by intra.pxd) rather than a
    NamedTuple, whose constructor runs as interpreted Python; it still unpacks like one."""

    __slots__ = ("request", "cached", "bsz", "is_last")

    def __init__(self, request: Request, cached: int, bsz: int, is_last: bool):
        self._fill(request, cached, bsz, is_last)

    def _fill(self, request: Request, cached: int, bsz: int, is_last: bool) -> None:
        self.request = request
        self.cached = cached  # tokens whose KV is available: the hit plus earlier chunks
        self.bsz = bsz  # tokens computed in this pass
        self.is_last = is_last  # this chunk finishes the request's prefill

    def __iter__(self):
        return iter((self.request, self.cached, self.bsz, self.is_last))

    def __eq__(self, other):
        if not isinstance(other, Chunk):
            return NotImplemented
        return tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self):
        return f"Chunk(request={self.request!r}, cached={self.cached}, bsz={self.bsz}, is_last={self.is_last})"


def new_chunk(request: Request, cached: int, bsz: int, is_last: bool) -> Chunk:
    """Chunk(request, cached, bsz, is_last); compiled (intra.pxd), a C call with the numbers
    unboxed (next_batch makes one per request per pass)."""
    chunk = Chunk.__new__(Chunk)
    chunk._fill(request, cached, bsz, is_last)
    return chunk


class PrefillBatcher:
    """One per PE GPU. `attn_flops(cached, bsz)` gives a chunk's FLOPs, `curve(flops)` the
    predicted seconds of a batch. quota_s None takes every ready request (no intra-engine
    scheduling). max_kv_tokens caps sum(cached + bsz) (HBM without layerwise prefill)."""

    def __init__(self, attn_flops: Callable[[int, int], float], curve: Callable[[float], float],
                 quota_s: float | None = 0.3, max_kv_tokens: int | None = None):
        if quota_s is not None and quota_s <= 0:
            raise InvalidArgument(f"quota_s must be > 0 or None, got {quota_s}")
        if max_kv_tokens is not None and max_kv_tokens <= 0:
            raise InvalidArgument(f"max_kv_tokens must be > 0 or None, got {max_kv_tokens}")
        self.attn_flops, self.curve = attn_flops, curve
        self.quota_s, self.max_kv_tokens = quota_s, max_kv_tokens
        # The usual cost model (AttentionFlops, FlopCurve) is called through its typed entry
        # points: compiled (intra.pxd), a quota check is two C calls instead of two Python
        # calls. Same numbers: AttentionFlops.__call__ is attention_flops of its fields (it is
        # frozen, so they are read once), FlopCurve.__call__ is seconds_for.
        self._shape = isinstance(attn_flops, AttentionFlops)
        if self._shape:
            self._layers, self._pair = attn_flops.num_layers, attn_flops.flops_per_pair
            self._topk, self._index = attn_flops.topk, attn_flops.index_flops_per_pair
        else:
            self._layers, self._pair, self._topk, self._index = 0, 0.0, 0, 0.0
        self._flop_curve = curve if isinstance(curve, FlopCurve) else None

    def next_batch(self, queue: deque) -> tuple[list[Chunk], float]:
        """Pops the requests it finishes from `queue` (a chunked one stays at the head) and
        returns the chunks with their total attention FLOPs."""
        chunks, flops, kv = [], 0.0, 0
        while queue:
            request = queue[0]
            cached = request.hit_tokens + request.num_computed
            left = request.prompt_tokens - cached
            if self.max_kv_tokens is not None and chunks and kv + cached + left > self.max_kv_tokens:
                break
            bsz = left if self._fits(flops, cached, left) else self._largest_fit(flops, cached, left)
            if bsz == 0:
                if chunks:
                    break
                bsz = 1  # a quota below one token would stall the engine: progress instead
            flops += self._attention(cached, bsz)
            kv += cached + bsz
            request.num_computed += bsz
            is_last = bsz == left
            chunks.append(new_chunk(request, cached, bsz, is_last))
            if not is_last:
                break  # the rest of this request waits for a later pass
            queue.popleft()
        return chunks, flops

    def _attention(self, cached: int, bsz: int) -> float:
        if self._shape:
            return attention_flops(self._layers, self._pair, self._topk, self._index, cached, bsz)
        return self.attn_flops(cached, bsz)

    def _seconds(self, flops: float) -> float:
        if self._flop_curve is not None:
            return self._flop_curve.seconds_for(flops)
        return self.curve(flops)

    def _fits(self, flops: float, cached: int, bsz: int) -> bool:
        return self.quota_s is None or self._seconds(flops + self._attention(cached, bsz)) <= self.quota_s

    def _largest_fit(self, flops: float, cached: int, left: int) -> int:
        lo, hi = 0, left  # lo fits (0 tokens trivially), hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._fits(flops, cached, mid):
                lo = mid
            else:
                hi = mid
        return lo
