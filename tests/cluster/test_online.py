"""Sessions arriving over time on the local cluster: each conversation's next turn goes to the
scheduler the moment its previous one finishes, and the PE prefills one session's turn while
a DE decodes another's — the tokens still equal a full recompute."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dualkv.transfer")

from dualkv.engine import Model  # noqa: E402

from test_local_cluster import BT, CFG, reference  # noqa: E402


@pytest.mark.slow
def test_sessions_overlap_and_match_the_recompute(block_root):
    from dualkv.cluster.local import LocalCluster, Session

    model = Model.from_seed(CFG, seed=3, batch_invariant=True)
    rng = np.random.default_rng(11)
    seen = []  # (prompt, generated) of every finished turn, in finishing order

    def follow(prompt, generated):
        seen.append((prompt, generated))
        if len(prompt) > 40:  # a follow-up (first prompts are 40 and 30 tokens): the end
            return None
        return prompt + generated + [int(t) for t in rng.integers(0, 256, 5)], 60

    # the first turn decodes 300 tokens (a few hundred ms even on a fast, quiet machine; a slow
    # one only lengthens it), so the second session, arriving 0.1 s in, meets it decoding
    sessions = [Session(0.0, [int(t) for t in rng.integers(0, 256, 40)], 300, follow),
                Session(0.1, [int(t) for t in rng.integers(0, 256, 30)], 60, follow)]
    with LocalCluster(CFG, block_root, num_de=1, seed=3, block_tokens=BT) as cluster:
        turns = cluster.run_sessions(sessions)
    assert [len(t) for t in turns] == [2, 2] and len(seen) == 4
    for prompt, generated in seen:
        assert generated == reference(model, prompt, len(generated))
    assert sorted(len(g) for _, g in seen) == [60, 60, 60, 300]
    assert all(t.ttft_s < t.ttst_s and t.submitted_s + t.ttft_s < t.done_s
               for session in turns for t in session)
    assert turns[0][1].num_cached_blocks > 0  # the follow-up read its context back
    # the second session's first token came while the first session's first turn decoded
    a, b = turns[0][0], turns[1][0]
    assert a.submitted_s + a.ttft_s < b.submitted_s + b.ttft_s < a.done_s
