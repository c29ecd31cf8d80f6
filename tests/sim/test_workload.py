import numpy as np
import pytest

from dualkv.errors import InvalidArgument
from dualkv.sim.workload import SYNTHETIC_PROMPT, TRACE_SETS, agentic, mooncake


@pytest.mark.parametrize("maxlen", sorted(TRACE_SETS))
def test_base_set_matches_paper_means(maxlen):
    cap, turns, total, context, _ = TRACE_SETS[maxlen]
    w = agentic(maxlen, 500)
    lasts = w.start[1:] - 1
    assert np.diff(w.start).mean() == pytest.approx(turns, rel=0.01)
    assert (w.prompt[lasts] + w.gen[lasts]).mean() == pytest.approx(total, rel=0.02)
    context_mean = (w.prompt - (w.prompt - w.hit)).mean()  # hit = context rounded to blocks
    assert context_mean == pytest.approx(context, rel=0.03)
    assert (w.prompt[lasts] + w.gen[lasts]).max() <= cap


def test_turns_chain_and_hits_are_blocks():
    w = agentic("32k", 3)
    for a in range(3):
        s, e = w.start[a], w.start[a + 1]
        assert w.hit[s] == 0
        ctx = w.prompt[s:e - 1] + w.gen[s:e - 1]
        assert np.all(w.hit[s + 1:e] == ctx // 64 * 64)
        assert np.all(w.prompt[s + 1:e] > ctx)
    assert np.all(w.hit % 64 == 0) and np.all(w.hit < w.prompt)


def test_extra_agents_get_a_synthetic_round():
    w = agentic("32k", 502)
    base = agentic("32k", 500)
    s = w.start[500]
    assert w.prompt[s] == SYNTHETIC_PROMPT and w.gen[s] == 1 and w.hit[s + 1] == 64  # its own random block
    with pytest.raises(InvalidArgument):
        agentic("16k", 10)
    assert base.num_agents == 500


def test_mooncake_hits_follow_shared_blocks(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [7, 8, 9]}\n'
                     '{"timestamp": 1500, "input_length": 1200, "output_length": 0, "hash_ids": [7, 8, 4]}\n'
                     '{"timestamp": 2000, "input_length": 600, "output_length": 3, "hash_ids": [5, 6]}\n')
    w = mooncake(trace)
    assert w.hit.tolist() == [0, 1024, 0] and w.gen.tolist() == [5, 1, 3]
    assert w.arrival_s.tolist() == [0.0, 1.5, 2.0]
    with pytest.raises(FileNotFoundError):
        mooncake(tmp_path / "missing.jsonl")
