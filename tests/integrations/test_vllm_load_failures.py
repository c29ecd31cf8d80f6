"""A block that fails to load never puts wrong KV into the store, and stops being offered.

vLLM's real Scheduler with DualKVConnector (vllm_harness); the stand-in model computes wrong KV
over a wrong context, so a block saved from KV computed over a failed page is visibly wrong
when a later engine loads it. Each test: turn 1 is stored; one of its blocks is damaged on
disk; engine B runs the next turn (the load fails there) and a later turn; a fresh engine C
then loads the whole conversation from the store. Runs in ~/.cache/dualkv/venvs/vllm."""
import logging
import os

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from dualkv.integrations.vllm.keys import block_keys  # noqa: E402
from vllm_harness import (BLOCK, MODES, TURN2, Harness, assert_kv_correct,  # noqa: E402
                          assert_nothing_left, first_turn, write_model_config)

TURN3 = TURN2 + [(3 * i + 1) % 900 + 1 for i in range(40)]
BAD_BLOCK = 2  # of the 5 stored by turn 1
POLICIES = ["recompute", "fail"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_config(str(tmp_path_factory.mktemp("tiny-llama")))


def mode_id(mode):
    return "-".join(f"{k}={v}" for k, v in mode.items()) or "sync-layerwise-direct"


def reference_tokens(model_dir, root):
    """Each turn's tokens in an engine whose store starts empty: nothing loaded."""
    h = Harness(model_dir, root)
    for req_id, prompt in (("turn2", TURN2), ("turn3", TURN3)):
        h.add(req_id, prompt, max_tokens=3)
        h.run()
    tokens = {r: list(h.requests[r].output_token_ids) for r in ("turn2", "turn3")}
    assert h.num_wrong_computes == 0
    h.close()
    return tokens


def damage_block(h, prompt_request, index: int) -> str:
    """Bytes inside layer 0's Layer Block of block `index` of the request's chain."""
    key = bytes(block_keys(prompt_request.block_hashes, index, index + 1)[0])
    path = h.worker.worker_side.store.io.path_of(key)
    with open(path, "r+b") as f:
        f.seek(h.worker.worker_side.layout.layer_offset(0) + 100)
        f.write(b"\xff" * 64)
    return key


def stored_prefix(h, request) -> int:
    """Blocks of the request's chain the scheduler side would offer a new request."""
    side = h.connector.scheduler_side
    keys = block_keys(request.block_hashes, 0, side.num_full_blocks(request))
    return int(side.store.match(keys, touch=False))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES, ids=mode_id)
def test_failed_load_saves_no_wrong_kv_and_is_offered_once(model_dir, tmp_path, mode, policy):
    want = reference_tokens(model_dir, str(tmp_path / "reference"))
    root = str(tmp_path / "blocks")
    os.makedirs(root)
    assert first_turn(model_dir, root, **mode)["blocks_saved"] == 5

    # Engine B: turn 2 loads the stored prefix, block 2 fails.
    h = Harness(model_dir, root, failure_policy=policy, **mode)
    turn2 = h.add("turn2", TURN2, max_tokens=3)
    bad_key = damage_block(h, turn2, BAD_BLOCK)
    side = h.worker.worker_side
    h.step_until(lambda: side.stats["load_errors"])
    assert stored_prefix(h, turn2) == BAD_BLOCK  # left the scheduler's index in that step
    h.run()
    if policy == "recompute":
        assert list(turn2.output_token_ids) == want["turn2"]
    else:
        assert turn2.status == RequestStatus.FINISHED_ERROR
    turn3 = h.add("turn3", TURN3, max_tokens=3)
    h.run()
    assert list(turn3.output_token_ids) == want["turn3"]
    assert side.stats["load_errors"] == 1  # offered once, never again
    assert side.stats["save_errors"] == 0
    # Saved again from recomputed KV: the whole chain is offered again, the file is back.
    assert stored_prefix(h, turn3) == len(TURN3) // BLOCK
    assert os.path.exists(side.store.io.path_of(bad_key))
    assert_nothing_left(h)
    h.close()

    # Engine C, fresh: loads every block of both turns; each one holds the right KV.
    c = Harness(model_dir, root, **mode)
    for req_id, prompt in (("turn2", TURN2), ("turn3", TURN3)):
        request = c.add(req_id, prompt, max_tokens=3)
        num_full = (len(prompt) - 1) // BLOCK
        c.step_until(lambda: c.computed_positions[req_id])
        assert c.computed_positions[req_id][0] == num_full * BLOCK  # all loaded, none computed
        assert_kv_correct(c, req_id, num_full * BLOCK)
        c.run()
        assert list(request.output_token_ids) == want[req_id]
    assert c.worker.worker_side.stats["load_errors"] == 0
    assert c.num_wrong_computes == 0
    assert_nothing_left(c)
    c.close()


def test_saves_computed_over_a_failed_page_are_dropped(model_dir, tmp_path, caplog):
    """The step that hits the failure computes turn 2's sixth block over the bad page: that
    save is dropped (not written), reported, and written later from recomputed KV. The
    connector logs the failed block with its key and file."""
    root = str(tmp_path / "blocks")
    os.makedirs(root)
    first_turn(model_dir, root)
    h = Harness(model_dir, root)
    turn2 = h.add("turn2", TURN2, max_tokens=3)
    bad_key = damage_block(h, turn2, BAD_BLOCK)
    with caplog.at_level("WARNING", logger="dualkv.integrations.vllm"):
        h.step()  # the sync load, its failure and the compute over it
    side = h.worker.worker_side
    lines = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(lines) == 1
    assert bad_key.hex()[:16] in lines[0] and side.store.io.path_of(bad_key) in lines[0]
    assert side.stats["load_errors"] == 1 and side.stats["save_dropped"] == 1
    assert h.num_wrong_computes > 0  # the stand-in did compute over the bad page
    sixth = bytes(block_keys(turn2.block_hashes, 5, 6)[0])
    assert not os.path.exists(side.store.io.path_of(sixth))
    h.run()
    assert os.path.exists(side.store.io.path_of(sixth))
    assert_nothing_left(h)
    h.close()


def test_failure_lines_are_rate_limited(caplog):
    from dualkv.integrations.vllm.transfers import RateLimitedLog

    limited = RateLimitedLog(logging.getLogger("dualkv.test"), interval_s=3600)
    with caplog.at_level("WARNING", logger="dualkv.test"):
        for i in range(5):
            limited.log("block %d failed", i)
        limited.last_s -= 3600  # the interval has passed
        limited.log("block %d failed", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "block 0 failed", "block 5 failed (4 more since the last such line)"]
