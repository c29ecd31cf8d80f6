"""P/D roles (Basic read): a prefill instance (kv_producer) computes the prompt and holds its
pages; a decode instance (kv_consumer) pulls them over UCX and decodes. vLLM's real Scheduler
on both sides (vllm_harness); the producer runs in this process or in its own (vllm_pd_peer).
The stand-in model computes wrong KV and tokens over a wrong context, so KV pulled wrong shows
up in the decode instance's pages and tokens. Runs in ~/.cache/dualkv/venvs/vllm."""
import os
import signal
import time

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import FinishReason  # noqa: E402

from dualkv.integrations.vllm.keys import block_keys  # noqa: E402
from vllm_harness import (BLOCK, PROMPT, TURN2, Harness, assert_kv_correct,  # noqa: E402
                          assert_nothing_left, first_turn, write_model_config)
from vllm_pd_peer import PeerProcess  # noqa: E402

TOKEN = "pd-test-token"
PD = {"token": TOKEN}
NUM_DECODE = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_config(str(tmp_path_factory.mktemp("tiny-llama")))


def reference(model_dir, root, prompt):
    """Greedy tokens of one kv_both engine (empty store: everything computed)."""
    h = Harness(model_dir, root)
    h.add("ref", prompt, max_tokens=NUM_DECODE)
    h.run()
    tokens = list(h.requests["ref"].output_token_ids)
    assert h.num_wrong_computes == 0
    h.close()
    return tokens


def decode(model_dir, tmp_path, params, prompt, timeout_s=60.0, **kwargs):
    """The decode instance: one request handed over with the producer's kv_transfer_params."""
    d = Harness(model_dir, str(tmp_path / "decode-store"), kv_role="kv_consumer",
                extra={**PD, **kwargs.pop("extra", {})}, **kwargs)
    d.add("req", prompt, max_tokens=NUM_DECODE, kv_transfer_params=params)
    return d


def producer_params(p, req_id):
    params = p.finished[req_id].kv_transfer_params
    assert params["do_remote_prefill"] and not params["do_remote_decode"]
    return params


def test_decode_pulls_the_prefilled_kv_in_process(model_dir, tmp_path):
    """Steps with no token to compute wait for the transfers, here up to a minute each: the
    steps below end in half that only if the saves, the pull and the PULLED notice each end
    their step's wait as they end."""
    want = reference(model_dir, str(tmp_path / "ref"), PROMPT)
    waits = {**PD, "timeout_s": 60, "idle_wait_ms": 60_000}

    def steps_until(h, done):
        start = time.monotonic()
        h.step_until(done, timeout_s=30)
        assert time.monotonic() - start < 30, "an idle step outlived the transfer it waited for"
    p = Harness(model_dir, str(tmp_path / "store"), kv_role="kv_producer", extra=waits)
    p.add("req", PROMPT, max_tokens=1, kv_transfer_params={"do_remote_decode": True})
    steps_until(p, lambda: "req" in p.finished)
    params = producer_params(p, "req")
    assert params["remote_num_tokens"] == len(PROMPT)
    assert len(params["remote_block_ids"]) == -(-len(PROMPT) // BLOCK)
    steps_until(p, lambda: p.worker.worker_side.stats["blocks_saved"] == 5)  # saves verified...
    assert "req" in p.scheduler.requests  # ...and the pages still held: nobody pulled them
    assert p.worker.worker_side.page_server.is_held("req")

    d = decode(model_dir, tmp_path, params, PROMPT, extra=waits)
    steps_until(d, lambda: d.computed_positions["req"])  # the pull ended, D computes
    assert d.computed_positions["req"] == [len(PROMPT) - 1]  # only the last token, to sample
    assert d.worker.worker_side.stats["idle_steps"] >= 1  # it did wait for the pull
    assert_kv_correct(d, "req", len(PROMPT))  # every prompt position, every layer: pulled
    steps_until(d, lambda: not d.scheduler.has_requests())
    assert list(d.requests["req"].output_token_ids) == want
    assert d.num_wrong_computes == 0
    steps_until(p, lambda: "req" not in p.scheduler.requests)  # freed once pulled
    assert p.worker.worker_side.page_server.stats == {"requests_pulled": 1, "requests_expired": 0}
    puller = d.worker.worker_side.page_puller
    assert puller.stats["blocks_pulled"] == len(params["remote_block_ids"])
    assert puller.stats["pull_errors"] == 0
    # the store got the prompt's full blocks once, from the producer only
    assert p.worker.worker_side.stats["blocks_saved"] == 5
    assert d.worker.worker_side.stats["blocks_saved"] == 0
    assert d.worker.worker_side.stats["blocks_loaded"] == 0
    for h in (p, d):
        assert_nothing_left(h)
        h.close()


def test_a_prompt_differing_in_the_partial_block_is_computed_not_pulled(model_dir, tmp_path):
    """The producer's KV covers the prompt's tail (a partial block no block key names): a
    decode instance handed its parameters with another tail computes the prompt itself."""
    other = PROMPT[:-2] + [PROMPT[-2] % 900 + 1, PROMPT[-1]]
    want = reference(model_dir, str(tmp_path / "ref"), other)
    p = Harness(model_dir, str(tmp_path / "store"), kv_role="kv_producer", extra=PD)
    p.add("req", PROMPT, max_tokens=1, kv_transfer_params={"do_remote_decode": True})
    p.step_until(lambda: "req" in p.finished)
    d = decode(model_dir, tmp_path, producer_params(p, "req"), other)
    d.run()
    assert d.computed_positions["req"][:len(other)] == list(range(len(other)))
    assert list(d.requests["req"].output_token_ids) == want
    assert d.worker.worker_side.page_puller.stats["blocks_pulled"] == 0
    assert d.num_wrong_computes == 0
    p.step_until(lambda: not p.scheduler.has_requests())  # D told P to free them
    for h in (p, d):
        assert_nothing_left(h)
        h.close()


def test_corrupt_stored_block_is_recomputed_on_the_producer(model_dir, tmp_path):
    want = reference(model_dir, str(tmp_path / "ref"), TURN2)
    root = str(tmp_path / "store")
    os.makedirs(root)
    assert first_turn(model_dir, root)["blocks_saved"] == 5
    p = Harness(model_dir, root, kv_role="kv_producer", extra=PD)
    request = p.add("req", TURN2, max_tokens=1, kv_transfer_params={"do_remote_decode": True})
    key = bytes(block_keys(request.block_hashes, 2, 3)[0])
    with open(p.worker.worker_side.store.io.path_of(key), "r+b") as f:
        f.seek(p.worker.worker_side.layout.layer_offset(0) + 100)
        f.write(b"\xff" * 64)
    p.step_until(lambda: "req" in p.finished)
    assert p.worker.worker_side.stats["load_errors"] == 1
    assert set(range(2 * BLOCK, len(TURN2))) <= set(p.computed_positions["req"])  # recomputed
    d = decode(model_dir, tmp_path, producer_params(p, "req"), TURN2)
    d.step_until(lambda: d.computed_positions["req"])
    assert d.computed_positions["req"] == [len(TURN2) - 1]
    assert_kv_correct(d, "req", len(TURN2))  # the recomputed KV, not the corrupt block's
    d.run()
    assert list(d.requests["req"].output_token_ids) == want
    p.step_until(lambda: not p.scheduler.has_requests())
    for h in (p, d):
        assert_nothing_left(h)
        h.close()


def test_unpulled_pages_are_freed_when_the_lease_ends(model_dir, tmp_path):
    p = Harness(model_dir, str(tmp_path / "store"), kv_role="kv_producer",
                extra={**PD, "timeout_s": 1, "pull_lease_s": 2})
    p.add("req", PROMPT, max_tokens=1, kv_transfer_params={"do_remote_decode": True})
    p.step_until(lambda: "req" in p.finished)
    params = producer_params(p, "req")
    stats, start = p.worker.worker_side.stats, time.monotonic()
    p.step_until(lambda: not p.scheduler.has_requests(), timeout_s=30)
    assert p.worker.worker_side.page_server.stats["requests_expired"] == 1
    # while the pages were held, each empty step waited its idle_wait_ms (20) unless a save
    # ended it: a few steps per second, not a busy loop
    assert stats["idle_steps"] <= (time.monotonic() - start) / 0.020 + 10, stats
    # a decode instance handed the expired params computes the prompt instead of pulling
    want = reference(model_dir, str(tmp_path / "ref"), PROMPT)
    d = decode(model_dir, tmp_path, params, PROMPT)
    d.run()
    assert d.computed_positions["req"][:len(PROMPT)] == list(range(len(PROMPT)))
    assert list(d.requests["req"].output_token_ids) == want
    for h in (p, d):
        assert_nothing_left(h)
        h.close()


# the producer in its own process -------------------------------------------------------------
@pytest.fixture
def producer(model_dir, tmp_path):
    proc = PeerProcess(model_dir, str(tmp_path / "store"), PD)
    yield proc
    proc.kill()


def test_decode_pulls_from_a_producer_process(model_dir, tmp_path, producer):
    want = reference(model_dir, str(tmp_path / "ref"), PROMPT)
    params = producer.prefill("req", PROMPT)
    d = decode(model_dir, tmp_path, params, PROMPT)
    d.step_until(lambda: d.computed_positions["req"])
    # the producer stepped all along, and freed nothing before the pull ended here
    assert not any(e["event"] == "freed" for e in producer.events)
    assert d.computed_positions["req"] == [len(PROMPT) - 1]
    assert_kv_correct(d, "req", len(PROMPT))
    d.run()
    assert list(d.requests["req"].output_token_ids) == want
    producer.wait_for("freed", "req", timeout_s=30)
    producer.send(op="stats")
    stats = producer.wait_for("stats")
    assert stats["server"] == {"requests_pulled": 1, "requests_expired": 0}
    assert stats["worker"]["blocks_saved"] == 5
    assert d.worker.worker_side.stats["blocks_saved"] == 0
    assert_nothing_left(d)
    d.close()


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_producer_killed_before_the_pull(model_dir, tmp_path, producer, policy):
    want = reference(model_dir, str(tmp_path / "ref"), PROMPT)
    params = producer.prefill("req", PROMPT)
    producer.kill()
    start = time.monotonic()
    d = decode(model_dir, tmp_path, params, PROMPT, failure_policy=policy, extra={"timeout_s": 5})
    d.run(timeout_s=30)
    assert time.monotonic() - start < 20  # the pull's deadline (5 s), not a hang
    assert d.worker.worker_side.page_puller.stats["pull_errors"] == 1
    if policy == "recompute":  # computed here from the first token, the right tokens
        assert d.computed_positions["req"][:len(PROMPT)] == list(range(len(PROMPT)))
        assert list(d.requests["req"].output_token_ids) == want
    else:
        assert d.finished["req"].finish_reason == FinishReason.ERROR
        assert not d.computed_positions["req"]
    assert d.num_wrong_computes == 0
    assert_nothing_left(d)
    d.close()


def test_producer_killed_with_the_endpoint_open(model_dir, tmp_path, producer):
    """The decode worker joined the producer for a first request; the producer dies before the
    second is pulled: the open endpoint fails it (keepalive), well within the deadline."""
    second = [t + 1 for t in PROMPT]
    want = reference(model_dir, str(tmp_path / "ref"), second)
    first_params = producer.prefill("a", PROMPT)
    second_params = producer.prefill("b", second)
    d = decode(model_dir, tmp_path, first_params, PROMPT, extra={"timeout_s": 20})
    d.run()
    producer.kill()
    start = time.monotonic()
    d.add("b", second, max_tokens=NUM_DECODE, kv_transfer_params=second_params)
    d.run(timeout_s=60)
    assert time.monotonic() - start < 15  # failed by the dead endpoint, not the 20 s deadline
    assert d.worker.worker_side.page_puller.stats["pull_errors"] == 1
    assert d.computed_positions["b"][:len(second)] == list(range(len(second)))
    assert list(d.requests["b"].output_token_ids) == want
    assert d.num_wrong_computes == 0
    assert_nothing_left(d)
    d.close()


def test_producer_stalled_mid_pull_fails_it_at_the_deadline(model_dir, tmp_path, producer):
    """A producer that stops answering (SIGSTOP) after the decode worker joined it: the reads
    cannot complete, the pull fails at its deadline and the prompt is recomputed here; a
    decode worker that did not wait for its reads would decode over empty pages."""
    second = [t + 1 for t in PROMPT]
    want = reference(model_dir, str(tmp_path / "ref"), second)
    first_params = producer.prefill("a", PROMPT)
    second_params = producer.prefill("b", second)
    d = decode(model_dir, tmp_path, first_params, PROMPT, extra={"timeout_s": 3})
    d.run()
    producer.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        d.add("b", second, max_tokens=NUM_DECODE, kv_transfer_params=second_params)
        d.run(timeout_s=60)
        assert time.monotonic() - start < 15  # the pull's 3 s deadline, then the recompute
    finally:
        producer.proc.send_signal(signal.SIGCONT)
    # told by the failed puller itself, the producer frees b's pages long before the lease ends
    producer.wait_for("freed", "b", timeout_s=60)
    producer.send(op="stats")
    assert producer.wait_for("stats")["server"] == {"requests_pulled": 2, "requests_expired": 0}
    assert d.worker.worker_side.page_puller.stats["pull_errors"] == 1
    assert d.computed_positions["b"][:len(second)] == list(range(len(second)))
    assert list(d.requests["b"].output_token_ids) == want
    assert d.num_wrong_computes == 0
    assert_nothing_left(d)
    d.close()
