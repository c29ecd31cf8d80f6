"""The cluster's PE batches are `dualkv.sched.PrefillBatcher`'s, for every policy, chunked
prefill included: under a small compute quota a turn is prefilled in several chunks over
several batches (its KV kept on the PE between them, its DE told "landed" by the last), and
its tokens and written-back KV still equal a full recompute."""
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")

from dualkv.engine import Model  # noqa: E402

from test_local_cluster import BT, CFG, check_blocks, reference  # noqa: E402

# The test model's attention: 2 layers x 256 FLOPs per (query, key) pair. At 1e9 FLOP/s a
# quota of 2.56e-4 s is 500 pairs: a 70-token prompt without a hit takes 31 tokens first, a
# turn with a 48-token hit about 10 new tokens per chunk.
FLOPS_PER_S = 1e9
QUOTA_S = 500 * 2 * 256 / FLOPS_PER_S


class Recorder:
    """Stands in for a PE's batcher: the queue it was given and the chunks it returned."""

    def __init__(self, batcher):
        self.batcher, self.calls = batcher, []

    def next_batch(self, queue):
        before = [(r.rid, r.prompt_tokens, r.hit_tokens, r.gen_tokens, r.num_computed)
                  for r in queue]
        chunks, flops = self.batcher.next_batch(queue)
        self.calls.append((before, chunks))
        return chunks, flops


def shape(chunks):
    return [(c.request.rid, c.cached, c.bsz, c.is_last) for c in chunks]


def run_conversations(block_root, policy, num_turns=2, on_prefill=None):
    """Turns of three conversations on a 1P2D cluster whose PE batches under QUOTA_S; returns
    the cluster's recorder, every turn's (prompt, result) and the final sequences."""
    from dualkv.cluster.local import LocalCluster

    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(0, CFG.vocab_size, n)] for n in (40, 70, 25)]
    turns, sent = [], []
    with LocalCluster(CFG, block_root, num_de=2, policy=policy, seed=3, block_tokens=BT,
                      pe_flops_per_s=FLOPS_PER_S, compute_quota_s=QUOTA_S) as cluster:
        recorder = cluster.batchers["pe"] = Recorder(cluster.batchers["pe"])
        cluster.on_prefill = lambda pe, chunks: sent.append(list(chunks))
        for _ in range(num_turns):
            results = cluster.run_batch([(p, 6) for p in prompts])
            turns += list(zip(prompts, results))
            prompts = [p + r.generated + [int(t) for t in rng.integers(0, 256, 30)]
                       for p, r in zip(prompts, results)]
    return recorder, sent, turns


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["dpl", "basic"])
def test_chunked_turns_match_the_recompute(block_root, policy):
    """dpl: layerwise, read side alternating, so chunked turns read on both sides; basic:
    the same batches, every cached KV loaded whole before each chunk's forward."""
    model = Model.from_seed(CFG, seed=3, batch_invariant=True)
    recorder, sent, turns = run_conversations(block_root, policy)
    chunks = [c for _, batch in recorder.calls for c in batch]
    per_rid = Counter(c.request.rid for c in chunks)
    # every turn was prefilled in at least two chunks, and the first turns have no hit
    assert len(per_rid) == len(turns) and min(per_rid.values()) >= 2, per_rid
    assert any(c.request.hit_tokens > 0 and not c.is_last for c in chunks)
    sides = set()
    for prompt, result in turns:
        assert result.generated == reference(model, prompt, 6)
        assert result.num_cached_blocks == result.num_matched_blocks
        sides.add(result.read_side)
    assert sides == ({"pe", "de"} if policy == "dpl" else {"pe"})
    for prompt, result in turns[-3:]:
        check_blocks(block_root, model, prompt + result.generated)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["dualpath", "basic"])
def test_the_cluster_batches_are_the_batchers(block_root, policy):
    """Every batch the PE got is exactly a batch the batcher returned, in order, and a fresh
    batcher with the same constants forms the same chunks from the same queue."""
    from collections import deque

    from dualkv.cluster.batching import pe_batcher
    from dualkv.sched import Request

    recorder, sent, _ = run_conversations(block_root, policy, num_turns=1)
    assert [shape(b) for b in sent] == [shape(chunks) for _, chunks in recorder.calls]
    assert any(not c.is_last for b in sent for c in b)  # chunked prefill happened
    fresh = pe_batcher(CFG, 8192, FLOPS_PER_S, QUOTA_S)
    for before, chunks in recorder.calls:
        queue = deque()
        for rid, prompt, hit, gen, computed in before:
            queue.append(Request(rid, prompt, hit, gen))
            queue[-1].num_computed = computed
        assert shape(fresh.next_batch(queue)[0]) == shape(chunks)
