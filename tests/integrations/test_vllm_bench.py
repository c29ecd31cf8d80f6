"""`dualkv bench vllm` end to end with its reference on: ExampleConnector and dualkv's staged
load, three rounds each in alternating order, on the tiny model."""
import json

import pytest

pytest.importorskip("vllm")

from dualkv.bench import vllm as bench  # noqa: E402


@pytest.mark.slow
def test_bench_against_example_connector(tmp_path, capsys):
    argv = ["--preset", "tiny", "--context", "300", "--new-tokens", "20", "--answer-tokens", "2",
            "--block-size", "32", "--configs", "example,dualkv-staged", "--rounds", "3",
            "--workdir", str(tmp_path), "--json"]
    assert bench.main(argv) == 0
    example, ours = json.loads(capsys.readouterr().out)["results"]
    assert example["config"] == "example" and ours["config"] == "dualkv-staged"
    for row in (example, ours):
        assert row["num_rounds"] == 3 and row["load_errors"] == 0
        assert row["replay_tokens_loaded"] > 0
    assert ours["reference"] == "example" and len(ours["ratios_of_rounds"]) == 3
    assert ours["ref_load_gbps"] == example["load_gbps"] > 0
