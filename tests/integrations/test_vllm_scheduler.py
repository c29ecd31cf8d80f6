"""DualKVConnector inside vLLM's real Scheduler (built from its module path by vLLM's factory),
with the worker side called in the model runner's order. Runs in ~/.cache/dualkv/venvs/vllm (make test-vllm);
the main suite skips it."""
import time

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from dualkv.integrations.vllm.keys import block_keys  # noqa: E402
from vllm_harness import (BLOCK, MODES, PROMPT, TURN2, Harness, assert_kv_correct,  # noqa: E402
                          assert_nothing_left, first_turn, write_model_config)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_config(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items())
                         or "sync-layerwise-direct")
def test_later_turn_loads_prefix_instead_of_computing(model_dir, block_root, mode):
    saved = first_turn(model_dir, block_root, **mode)
    assert saved["blocks_saved"] == 5 and saved["save_errors"] == 0

    h = Harness(model_dir, block_root, **mode)  # a fresh engine: empty local prefix cache
    request = h.add("turn2", TURN2, max_tokens=3)
    assert h.connector.get_num_new_matched_tokens(request, 0) == (5 * BLOCK, bool(
        mode.get("async_load")))
    h.step_until(lambda: h.computed_positions["turn2"])  # async: the request waits for its load
    assert h.computed_positions["turn2"][0] == 5 * BLOCK  # the loaded tokens are not recomputed
    assert_kv_correct(h, "turn2", 5 * BLOCK)
    h.run()
    stats = h.worker.worker_side.stats
    assert stats["load_errors"] == 0
    assert stats["bytes_loaded"] == saved["bytes_saved"] == 5 * h.connector.scheduler_side.store.layout.payload_bytes
    assert_nothing_left(h)
    h.close()


@pytest.mark.parametrize("async_load", [False, True])
def test_corrupt_block_is_reported_and_recomputed(model_dir, block_root, async_load):
    first_turn(model_dir, block_root, async_load=async_load)
    h = Harness(model_dir, block_root, async_load=async_load)
    request = h.add("turn2", TURN2, max_tokens=3)
    bad_key = bytes(block_keys(request.block_hashes, 2, 3)[0])
    path = h.worker.worker_side.store.io.path_of(bad_key)
    with open(path, "r+b") as f:  # flip bytes inside layer 1's Layer Block
        f.seek(h.worker.worker_side.layout.layer_offset(1) + 100)
        f.write(b"\xff" * 64)
    # until the load, its failure and the recompute are through
    h.step_until(lambda: set(range(2 * BLOCK, len(TURN2))) <= set(h.computed_positions["turn2"]))
    stats = h.worker.worker_side.stats
    assert stats["load_errors"] == 1 and stats["blocks_loaded"] == 4
    positions = set(h.computed_positions["turn2"])
    assert set(range(2 * BLOCK, len(TURN2))) <= positions  # from the bad block on: recomputed
    assert not positions & set(range(2 * BLOCK))            # before it: loaded, not recomputed
    assert_kv_correct(h, "turn2", len(TURN2))
    h.run()
    assert_nothing_left(h)
    h.close()


def test_aborted_and_preempted_requests_leave_nothing_behind(model_dir, block_root):
    # 12 pages for two requests that need 7 each once they decode: vLLM must preempt one.
    h = Harness(model_dir, block_root, num_blocks=13, max_batched_tokens=512)
    h.add("a", PROMPT, max_tokens=30)
    h.add("b", [t + 1 for t in PROMPT], max_tokens=30)
    h.add("c", [t + 2 for t in PROMPT], max_tokens=30)
    h.step()
    h.scheduler.finish_requests("c", RequestStatus.FINISHED_ABORTED)
    num_preemptions = 0
    deadline = time.monotonic() + 120  # async saves land on the store's threads: seconds, not steps
    while h.scheduler.has_requests() and time.monotonic() < deadline:
        out = h.step()
        num_preemptions += len(out.preempted_req_ids or ())
        if out.total_num_scheduled_tokens == 0:
            time.sleep(0.002)
    assert num_preemptions > 0
    assert h.worker.worker_side.stats["save_errors"] == 0
    assert_nothing_left(h)
    h.close()
