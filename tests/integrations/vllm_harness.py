"""Drives vLLM's real Scheduler and a worker-side connector the way vLLM's model runner does,
with a stand-in model whose KV is a known function of (layer, position, token): a block that
was loaded can be checked against what computing it would have written.

Like a real model, the stand-in computes over the KV it attends to: when any page of the
context (the request's positions before this step, layers up to the one computing) is not what
computing it would have written, the new KV comes out wrong (negated) and so does the sampled
token. KV computed over a page that failed to load is therefore visibly wrong wherever it
ends up, in vLLM's pages or in the store."""
from __future__ import annotations

import os
import time

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.config import (CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig,  # noqa: E402
                         SchedulerConfig, VllmConfig)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.forward_context import get_forward_context, set_forward_context  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig,  # noqa: E402
                                        KVCacheGroupSpec)
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

BLOCK = 16
NUM_LAYERS, HEADS, HEAD_DIM = 2, 2, 32
LAYERS = [f"model.layers.{i}.self_attn.attn" for i in range(NUM_LAYERS)]
EOS = 999

# A conversation: turn 1 and the next turn that extends it.
PROMPT = [(7 * i + 3) % 900 + 1 for i in range(5 * BLOCK + 5)]  # 5 full blocks and a tail
TURN2 = PROMPT + [11, 12, 13] + [(5 * i) % 900 + 1 for i in range(20)]
MODES = [dict(), dict(async_load=True), dict(load_path="staged"), dict(layerwise=False),
         dict(async_load=True, load_path="staged")]



def write_model_config(directory: str) -> str:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=HEADS * HEAD_DIM * 2, intermediate_size=256,
                num_hidden_layers=NUM_LAYERS, num_attention_heads=HEADS * 2,
                num_key_value_heads=HEADS, head_dim=HEAD_DIM,
                max_position_embeddings=4096).save_pretrained(directory)
    return directory


class Harness:
    def __init__(self, model_dir: str, root: str, num_blocks: int = 64, async_load=False,
                 layerwise=True, load_path="direct", max_batched_tokens: int = 256,
                 failure_policy: str = "recompute", kv_role: str = "kv_both",
                 extra: dict | None = None):
        extra = {"root": root, "async_load": async_load, "layerwise": layerwise,
                 "load_path": load_path, "pool_slots": 64, "timeout_s": 20, **(extra or {})}
        self.config = VllmConfig(
            model_config=ModelConfig(model=model_dir, dtype="bfloat16", seed=0,
                                     skip_tokenizer_init=True, max_model_len=2048),
            scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=max_batched_tokens,
                                             max_model_len=2048, enable_chunked_prefill=True,
                                             is_encoder_decoder=False),
            cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=True),
            kv_transfer_config=KVTransferConfig(
                kv_connector="DualKVConnector", kv_connector_module_path="dualkv.integrations.vllm",
                kv_role=kv_role, kv_load_failure_policy=failure_policy,
                kv_connector_extra_config=extra),
            device_config=DeviceConfig("cpu"))
        self.config.cache_config.num_gpu_blocks = num_blocks
        self.kv_cache_config = KVCacheConfig(
            num_blocks=num_blocks, kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(LAYERS, FullAttentionSpec(
                block_size=BLOCK, num_kv_heads=HEADS, head_size=HEAD_DIM, dtype=torch.bfloat16))])
        self.scheduler = Scheduler(vllm_config=self.config, kv_cache_config=self.kv_cache_config,
                                   structured_output_manager=StructuredOutputManager(self.config),
                                   block_size=BLOCK, log_stats=True)
        self.worker = KVConnectorFactory.create_connector(self.config, KVConnectorRole.WORKER,
                                                          self.kv_cache_config)
        # the CPU backend's pages: [num_blocks, kv_heads, block_size, 2 * head_dim] per layer
        self.kv = {name: torch.zeros(num_blocks, HEADS, BLOCK, 2 * HEAD_DIM, dtype=torch.bfloat16)
                   for name in LAYERS}
        self.worker.register_kv_caches(self.kv)
        handshake = self.worker.get_handshake_metadata()  # as vLLM's engine core passes it on
        if handshake is not None:
            self.scheduler.connector.set_xfer_handshake_metadata_pp_aware({(0, 0): handshake})
        self.requests: dict[str, Request] = {}
        self.computed_positions: dict[str, list[int]] = {}  # positions the "model" computed
        self.outputs: dict[str, list[int]] = {}
        # req_id -> its last engine output (finish reason, kv_transfer_params), as the API returns
        self.finished: dict[str, object] = {}
        self.context_ok: dict[str, bool] = {}  # this step, per request: its context was right
        self.num_wrong_computes = 0  # (request, step, layer)s computed over a wrong context
        init_none_hash(sha256)

    @property
    def connector(self):
        return self.scheduler.connector

    def add(self, req_id: str, tokens: list[int], max_tokens: int = 4,
            kv_transfer_params: dict | None = None) -> Request:
        extra = {"kv_transfer_params": dict(kv_transfer_params)} if kv_transfer_params else None
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra)
        params.update_from_generation_config({}, EOS)
        request = Request(request_id=req_id, prompt_token_ids=list(tokens), sampling_params=params,
                          pooling_params=None, block_hasher=get_request_block_hasher(BLOCK, sha256))
        self.requests[req_id] = request
        self.computed_positions[req_id] = []
        self.outputs[req_id] = []
        self.scheduler.add_request(request)
        return request

    def step(self):
        out = self.scheduler.schedule()
        meta = out.kv_connector_metadata
        self.worker.handle_preemptions(meta)
        self.worker.bind_connector_metadata(meta)
        with set_forward_context(None, self.config):
            if out.has_sync_kv_loads:
                self.worker.start_load_kv(get_forward_context())
            for name in LAYERS:  # the model: attention layer by layer
                self.worker.wait_for_layer_load(name)
                self._compute_layer(out, name)
                self.worker.save_kv_layer(name, self.kv[name], None)
            if not out.has_sync_kv_loads:
                self.worker.start_load_kv(get_forward_context())
            self.worker.wait_for_save()
            sending, recving = self.worker.get_finished(out.finished_req_ids)
            conn_out = KVConnectorOutput(
                finished_sending=sending, finished_recving=recving,
                invalid_block_ids=self.worker.get_block_ids_with_load_errors(),
                kv_connector_worker_meta=self.worker.build_connector_worker_meta())
            self.worker.clear_connector_metadata()
        runner_output = self._runner_output(out, conn_out)
        for outputs in self.scheduler.update_from_output(out, runner_output).values():
            for output in outputs.outputs:
                if output.finished:
                    self.finished[output.request_id] = output
        return out

    def _scheduled(self, out):
        for new in out.scheduled_new_reqs:
            yield new.req_id, new.num_computed_tokens
        cached = out.scheduled_cached_reqs
        yield from zip(cached.req_ids, cached.num_computed_tokens)

    def _compute_layer(self, out, name):
        layer = LAYERS.index(name)
        for req_id, num_computed in self._scheduled(out):
            request = self.requests[req_id]
            block_ids = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
            ok = self.context_ok.get(req_id, True) if layer else True
            pages = self.kv[name]  # the request's block table is read once per layer
            ok = ok and all(pages[block_ids[pos // BLOCK]][:, pos % BLOCK].equal(
                expected_kv(layer, pos, request.all_token_ids[pos])) for pos in range(num_computed))
            self.context_ok[req_id] = ok
            self.num_wrong_computes += not ok
            for pos in range(num_computed, num_computed + out.num_scheduled_tokens[req_id]):
                page = self.kv[name][block_ids[pos // BLOCK]]
                kv = expected_kv(layer, pos, request.all_token_ids[pos])
                page[:, pos % BLOCK] = kv if ok else -kv
                if layer == 0:
                    self.computed_positions[req_id].append(pos)

    def _runner_output(self, out, conn_out):
        req_ids, sampled = [], []
        for req_id, num_computed in self._scheduled(out):
            request = self.requests[req_id]
            req_ids.append(req_id)
            done = num_computed + out.num_scheduled_tokens[req_id] >= request.num_tokens
            wrong = 0 if self.context_ok.pop(req_id, True) else 7  # a wrong context, a wrong token
            token = 1 + ((sum(request.all_token_ids) + wrong) % 500) if done else None
            sampled.append([token] if done else [])
            if done:
                self.outputs[req_id].append(token)
        return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=sampled, logprobs=None, prompt_logprobs_dict={},
                                 pooler_output=None, kv_connector_output=conn_out)

    def step_until(self, done, timeout_s: float = 60.0):
        """Steps until done() holds; a deadline in seconds, not steps: async loads finish on
        the store's threads, whenever a loaded machine lets them."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done within {timeout_s} s")
            self.step()  # a step with nothing to compute waits in the connector (idle_wait_ms)

    def run(self, timeout_s: float = 120.0):
        """Steps like an engine loop until every request is done. Async loads and saves finish
        on the store's threads, so the deadline is in seconds, not steps: on a loaded machine a
        few hundred idle steps can pass before one write lands."""
        deadline = time.monotonic() + timeout_s
        while self.scheduler.has_requests():
            if time.monotonic() > deadline:
                raise AssertionError(f"requests did not finish within {timeout_s} s")
            self.step()

    def page(self, req_id: str, pos: int, layer: int) -> torch.Tensor:
        block_ids = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
        return self.kv[LAYERS[layer]][block_ids[pos // BLOCK]][:, pos % BLOCK]

    def close(self):
        self.worker.shutdown()
        self.scheduler.shutdown()


def expected_kv(layer: int, pos: int, token: int) -> torch.Tensor:
    """The stand-in model's KV of one token in one layer: distinct per (layer, pos, token)."""
    base = (layer * 7919 + pos * 31 + token * 131) % 2039
    values = torch.arange(2 * HEAD_DIM, dtype=torch.float32) + base
    return torch.stack([values + h for h in range(HEADS)]).to(torch.bfloat16)


def first_turn(model_dir, root, **mode):
    h = Harness(model_dir, root, **mode)
    h.add("turn1", PROMPT, max_tokens=3)
    h.run()
    stats = dict(h.worker.worker_side.stats)
    assert_nothing_left(h)
    h.close()
    return stats


def assert_nothing_left(h):
    """No request, block, slot or transfer outlives the requests (vLLM's own leak checks too)."""
    s = h.scheduler
    assert not s.requests and not s.waiting and not s.running and not s.finished_recving_kv_req_ids
    pool = s.kv_cache_manager.block_pool
    assert pool.free_block_queue.num_free_blocks == pool.num_gpu_blocks - 1
    assert all(b.ref_cnt == 0 for b in pool.blocks)
    side = h.worker.worker_side
    assert not side.saves and not side.saving_req_ids and not side.async_loads
    assert side.sync_load is None and side.sync_fetch is None and side.step_save is None
    assert side.store.pool.num_free == side.store.pool.num_slots
    sched = h.connector.scheduler_side
    assert not sched._tracked and not sched._matched and not sched._loads
    assert not side.poisoned_req_ids
    assert side.page_server is None or not side.page_server.held
    assert side.page_puller is None or not side.page_puller.pulls


def assert_kv_correct(h, req_id, upto):
    for pos in range(upto):
        for layer in range(2):
            assert h.page(req_id, pos, layer).equal(
                expected_kv(layer, pos, h.requests[req_id].all_token_ids[pos])), (pos, layer)
