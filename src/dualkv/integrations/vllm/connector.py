"""DualKVConnector: vLLM's KV connector (V1) on dualkv's block store.

Load it with
  --kv-transfer-config '{"kv_connector": "DualKVConnector",
    "kv_connector_module_path": "dualkv.integrations.vllm", "kv_role": "kv_both",
    "kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"root": "/blocks"}}'
vLLM builds one instance per role: the scheduler's matches prefixes and plans each step's
loads and saves; each worker's moves the pages. docs/vllm.md lists every option.
"""
from __future__ import annotations

import logging
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole

from dualkv.errors import InvalidArgument
from dualkv.integrations.vllm.config import ConnectorConfig, namespace_parts
from dualkv.integrations.vllm.keys import layout_from_kv_cache_config
from dualkv.integrations.vllm.metadata import DualKVMetadata
from dualkv.integrations.vllm.pd_params import (ProducerHandshake, wants_dualpath_read,
                                                wants_remote_prefill)
from dualkv.integrations.vllm.pd_scheduler import HoldPlan, PullPlan
from dualkv.integrations.vllm.scheduler import SchedulerSide
from dualkv.integrations.vllm.worker import WorkerSide

log = logging.getLogger(__name__)


def _open_store(config: ConnectorConfig, model_id: str, rank: str, pool_slots: int,
                capacity_bytes: int):
    from dualkv.store import BlockStore, StoreConfig

    def open_store(layout):
        return BlockStore(StoreConfig(
            config.root, layout, model_id=model_id, rank=rank, pool_slots=pool_slots,
            capacity_bytes=capacity_bytes, queue_depth=config.queue_depth,
            io_backend=config.io_backend, direct_io=config.direct_io))
    return open_store


class DualKVConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        if (role == KVConnectorRole.SCHEDULER  # once per engine, not once per role
                and self._kv_transfer_config.kv_load_failure_policy != "recompute"):
            log.warning("dualkv: kv_load_failure_policy is %r: a corrupt or missing block fails "
                        "its request; set \"recompute\" to have vLLM recompute it",
                        self._kv_transfer_config.kv_load_failure_policy)
        layout = layout_from_kv_cache_config(kv_cache_config)
        self.kv_role = self._kv_transfer_config.kv_role
        if self.kv_role in ("kv_producer", "kv_consumer"):
            _check_pd_supported(vllm_config, self.config)
        self.scheduler_side = self.worker_side = None
        self.holds = self.pulls = None  # P/D roles, scheduler side (pd_scheduler)
        self.store_block_bytes = layout.payload_bytes  # one Full Block's KV bytes
        if role == KVConnectorRole.SCHEDULER:
            hash_block_size = kv_cache_config.hash_block_size or layout.block_tokens
            hash_stride = layout.block_tokens // hash_block_size
            model_id, rank = namespace_parts(vllm_config, kv_cache_config, self.config, rank=0)
            # no pool use and no capacity: only the workers' stores evict (and delete files)
            store = _open_store(self.config, model_id, rank, 1, 0)(layout)
            self.scheduler_side = SchedulerSide(store, layout.block_tokens, hash_stride,
                                                self.config)
            if self.kv_role in ("kv_producer", "kv_consumer"):
                self.holds = HoldPlan(self._kv_transfer_config.engine_id, layout.block_tokens,
                                      hash_stride, model_id, self.config.pull_lease_s)
                # consumer: Basic pulls and DualPath's new tokens, async; producer: DualPath's
                # hit, sync and layerwise
                self.pulls = PullPlan(layout.block_tokens, hash_stride, model_id,
                                      self.config.timeout_s,
                                      is_async=self.kv_role == "kv_consumer")
        else:
            model_id, rank = namespace_parts(vllm_config, kv_cache_config, self.config)
            self.model_id = model_id
            self.worker_side = WorkerSide(_open_store(self.config, model_id, rank,
                                                      self.config.pool_slots,
                                                      self.config.capacity_bytes),
                                          self.config, kv_cache_config.num_blocks, layout)

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        layerwise = (extra_config or {}).get("layerwise", True)
        return layerwise if isinstance(layerwise, bool) else str(layerwise).lower() in ("1", "true", "yes")

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a save dropped on preemption is only a later miss

    # worker side ----------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches):
        side = self.worker_side
        side.register_kv_caches(kv_caches)
        rank = self._vllm_config.parallel_config.rank
        if self.kv_role in ("kv_producer", "kv_consumer"):  # each serves pages and pulls them
            from dualkv.integrations.vllm.pd_consumer import PagePuller
            from dualkv.integrations.vllm.pd_producer import PageServer
            side.page_server = PageServer(self.config, side.kv, rank)
            side.page_puller = PagePuller(self.config, side.kv, side.pacer)

    def get_handshake_metadata(self) -> ProducerHandshake | None:
        """The worker's rendezvous address, for its scheduler side's kv_transfer_params."""
        server = self.worker_side.page_server if self.worker_side else None
        return ProducerHandshake(server.address, self.model_id) if server else None

    def handle_preemptions(self, kv_connector_metadata):
        self.worker_side.handle_preemptions(kv_connector_metadata)

    def start_load_kv(self, forward_context, **kwargs) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, DualKVMetadata)
        self.worker_side.start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        self.worker_side.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs) -> None:
        if self.worker_side.meta is None:  # before start_load_kv in this step (async loads)
            self.worker_side.bind(self._get_connector_metadata())
        self.worker_side.save_kv_layer(layer_name)

    def wait_for_save(self):
        if self.worker_side.meta is None and self.has_connector_metadata():
            self.worker_side.bind(self._get_connector_metadata())
        self.worker_side.wait_for_save()

    def get_finished(self, finished_req_ids):
        return self.worker_side.get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker_side.take_load_errors() if self.worker_side else set()

    def build_connector_worker_meta(self):
        return self.worker_side.take_worker_meta() if self.worker_side else None

    def shutdown(self):
        side = self.worker_side or self.scheduler_side
        if self.worker_side is not None:
            self.worker_side.shutdown()
        elif side is not None:
            side.store.close()

    # scheduler side -------------------------------------------------------------------------
    def set_xfer_handshake_metadata(self, metadata) -> None:
        if self.holds is not None:
            self.holds.set_handshake(metadata)

    def bind_kv_cache_manager(self, kv_cache_manager) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        self.scheduler_side.kv_cache_manager = kv_cache_manager

    def _reads_store(self, request) -> bool:
        """kv_both, a producer's Basic read, a consumer's DualPath hit request. A consumer never
        reads the store otherwise (its prompts come from a producer)."""
        return self.kv_role != "kv_consumer" or wants_dualpath_read(request)

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        if self.pulls is not None and wants_remote_prefill(request):  # held by another instance
            matched = self.pulls.get_num_new_matched_tokens(request, num_computed_tokens)
            if matched is not None:
                return matched
        if not self._reads_store(request):
            return 0, False
        return self.scheduler_side.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
        if self.pulls is not None and wants_remote_prefill(request):
            num_hit = self.pulls.update_state_after_alloc(request, blocks, num_external_tokens)
            if num_hit is not None:
                if self.kv_role == "kv_producer":  # the decode instance read the hit from the
                    self.scheduler_side.track(request, num_hit)  # store: save after it
                return
        if self._reads_store(request):
            self.scheduler_side.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output) -> DualKVMetadata:
        meta = self.scheduler_side.build_connector_meta(scheduler_output)
        meta.no_tokens_scheduled = scheduler_output.total_num_scheduled_tokens == 0
        if self.holds is not None:
            meta.holds = self.holds.take_holds()
            meta.pulls = self.pulls.take_pulls()
            meta.fetches = self.pulls.take_fetches()
        return meta

    def update_connector_output(self, connector_output):
        meta = connector_output.kv_connector_worker_meta
        if meta is not None:
            self.scheduler_side.learn(meta)

    def request_finished(self, request, block_ids):
        """True keeps the pages until get_finished reports the request: its saves are verified
        and, where another instance reads them (pd_scheduler.HoldPlan), it has read them."""
        is_saving = self.scheduler_side.request_finished(request)
        read_blocks = self.scheduler_side.take_read_blocks(request.request_id)
        if self.holds is None:
            return is_saving, None
        self.pulls.request_finished(request)
        is_held, params = self.holds.request_finished(request, block_ids)
        if params is not None:  # what this instance read from the store for it (the router's stats)
            params["dualkv_store_read_tokens"] = read_blocks * self.scheduler_side.block_size
            params["dualkv_store_read_bytes"] = read_blocks * self.store_block_bytes
        return is_saving or is_held, params


def _check_pd_supported(vllm_config, config: ConnectorConfig) -> None:
    parallel = vllm_config.parallel_config
    if parallel.tensor_parallel_size * parallel.pipeline_parallel_size != 1:
        raise InvalidArgument("dualkv's P/D roles support one rank per instance for now "
                              "(tensor and pipeline parallel size 1)")
    config.cluster_token()  # fails now, not at the first request, without a token
