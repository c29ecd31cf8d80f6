"""`dualkv bench vllm`'s rounds: medians per config and the paired per-round ratio of a dualkv
config's load GB/s to ExampleConnector's (the engine runs themselves are in
tests/integrations/test_vllm_bench.py)."""
import pytest

from dualkv.bench import vllm
from dualkv.errors import InvalidArgument


def rounds(config: str, load_gbps: list[float], ttft_s: list[float]) -> list[dict]:
    return [{"config": config, "load_gbps": g, "next_turn_ttft_s": t, "replay_ttft_s": t / 2,
             "bytes_loaded": 100} for g, t in zip(load_gbps, ttft_s)]


def test_dualkv_rows_pair_each_round_with_examples():
    example = rounds("example", [1.0, 0.5, 1.0], [2.0, 4.0, 2.0])
    row = vllm.summarize(rounds("dualkv-staged", [3.0, 1.0, 2.0], [1.0, 3.0, 1.5]), example)
    assert row["reference"] == "example" and row["higher_is_better"] is True
    assert row["ratios_of_rounds"] == [3.0, 2.0, 2.0] and row["ratio_of_rounds"] == 2.0
    assert row["load_gbps"] == 2.0 and row["ref_load_gbps"] == 1.0
    assert row["next_turn_ttft_s"] == 1.5 and row["num_rounds"] == 3


def test_a_layerwise_config_is_compared_on_the_replay_ttft():
    """Its load span holds the forward between layer waits: no bandwidth to compare."""
    assert vllm.compared_figure("dualkv") == "replay_ttft_s"
    assert vllm.compared_figure("dualkv-staged") == "load_gbps"
    example = rounds("example", [1.0, 0.5, 1.0], [2.0, 4.0, 2.0])
    row = vllm.summarize(rounds("dualkv", [0.1, 0.1, 0.1], [1.0, 1.0, 0.5]), example,
                         vllm.compared_figure("dualkv"))
    assert row["higher_is_better"] is False and "not a bandwidth" in row["load_span"]
    assert row["ratios_of_rounds"] == [0.5, 0.25, 0.25] and row["ratio_of_rounds"] == 0.25
    assert row["replay_ttft_s"] == 0.5 and row["ref_replay_ttft_s"] == 1.0


def test_reference_rows_carry_medians_without_a_ratio():
    row = vllm.summarize(rounds("example", [1.0, 0.5, 1.0], [2.0, 4.0, 2.0]), None)
    assert "ratio" not in row and row["load_gbps"] == 1.0 and row["runs_load_gbps"] == [1.0, 0.5, 1.0]


def test_fewer_than_three_rounds_is_refused():
    with pytest.raises(InvalidArgument, match="at least 3 rounds"):
        vllm.main(["--rounds", "2"])
