from collections import deque

import pytest

from dualkv.errors import InvalidArgument
from dualkv.sched import AttentionFlops, FlopCurve, PrefillBatcher, Request

DENSE = AttentionFlops(num_layers=2, flops_per_pair=1.0)
CURVE = FlopCurve.linear(flops_per_s=1e6)


def test_flops_dense_and_sparse():
    assert DENSE(0, 3) == 2 * 6  # pairs 1 + 2 + 3, two layers
    sparse = AttentionFlops(num_layers=1, flops_per_pair=1.0, topk=4)
    assert sparse(10, 3) == 12  # every new token sees topk keys
    assert sparse(2, 4) == 3 + 4 + 4 + 4  # positions 3..6, capped at 4
    with pytest.raises(InvalidArgument):
        AttentionFlops(num_layers=0, flops_per_pair=1.0)


def test_curve_piecewise_and_validation():
    curve = FlopCurve([0, 10, 20], [1, 2, 4])
    assert curve(5) == 1.5 and curve(30) == 6
    with pytest.raises(InvalidArgument):
        FlopCurve([0, 0], [1, 2])


def test_fifo_until_quota_then_largest_chunk():
    quota = 0.05
    batcher = PrefillBatcher(DENSE, CURVE, quota_s=quota)
    reqs = [Request(i, 2000, 1000, 1) for i in range(5)]
    queue = deque(reqs)
    chunks, flops = batcher.next_batch(queue)
    whole = [c for c in chunks if c.is_last]
    part = chunks[-1]
    assert not part.is_last and queue[0] is part.request  # the overflowing one stays
    assert CURVE(flops) <= quota
    used = sum(DENSE(c.cached, c.bsz) for c in whole)
    # the chunk is the largest that fits: one more token would overflow
    assert CURVE(used + DENSE(part.cached, part.bsz + 1)) > quota
    assert CURVE(used + DENSE(part.cached, part.bsz)) <= quota
    # the next pass resumes the chunked request where it stopped
    chunks2, _ = batcher.next_batch(queue)
    assert chunks2[0].request is part.request and chunks2[0].cached == 1000 + part.bsz


def test_every_token_computed_once():
    batcher = PrefillBatcher(DENSE, CURVE, quota_s=0.01)
    reqs = [Request(i, 3000, 100 * i, 1) for i in range(6)]
    queue, done = deque(reqs), {}
    while queue:
        chunks, _ = batcher.next_batch(queue)
        assert chunks
        for c in chunks:
            done[c.request.rid] = done.get(c.request.rid, 0) + c.bsz
    assert done == {r.rid: r.miss_tokens for r in reqs}


def test_no_quota_takes_all_and_hbm_cap_limits():
    reqs = [Request(i, 1000, 900, 1) for i in range(4)]
    chunks, _ = PrefillBatcher(DENSE, CURVE, quota_s=None).next_batch(deque(reqs))
    assert len(chunks) == 4 and all(c.is_last for c in chunks)
    reqs = [Request(i, 1000, 900, 1) for i in range(4)]
    queue = deque(reqs)
    chunks, _ = PrefillBatcher(DENSE, CURVE, quota_s=None, max_kv_tokens=2500).next_batch(queue)
    assert len(chunks) == 2 and len(queue) == 2


def test_progress_when_quota_below_one_token():
    queue = deque([Request(0, 10**6, 10**6 - 5, 1)])
    chunks, _ = PrefillBatcher(DENSE, CURVE, quota_s=1e-9).next_batch(queue)
    assert chunks[0].bsz == 1
