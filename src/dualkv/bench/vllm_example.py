"""vLLM's ExampleConnector with its load and save time and bytes counted, for the bench."""
from __future__ import annotations

import time

from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector


class TimedExampleConnector(ExampleConnector):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stats = {"bytes_loaded": 0, "bytes_saved": 0, "load_s": 0.0, "save_s": 0.0,
                      "tokens_loaded": 0}

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._get_connector_metadata()
        loads = [r for r in meta.requests if not r.is_store]
        start = time.perf_counter()
        super().start_load_kv(forward_context, **kwargs)  # reads every file synchronously
        self.stats["load_s"] += time.perf_counter() - start
        if loads and forward_context.attn_metadata is not None:
            num_tokens = sum(len(r.slot_mapping) for r in loads)
            self.stats["tokens_loaded"] += num_tokens
            self.stats["bytes_loaded"] += num_tokens * self._bytes_per_token(forward_context)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        meta = self._get_connector_metadata()
        start = time.perf_counter()
        super().save_kv_layer(layer_name, kv_layer, attn_metadata, **kwargs)
        self.stats["save_s"] += time.perf_counter() - start
        num_tokens = sum(len(r.slot_mapping) for r in meta.requests if r.is_store)
        per_token = kv_layer[0].numel() * kv_layer.element_size() // self._block_size
        self.stats["bytes_saved"] += num_tokens * per_token

    def _bytes_per_token(self, forward_context) -> int:
        total = 0
        for layer in forward_context.no_compile_layers.values():
            kv = getattr(layer, "kv_cache", None)
            if kv is not None:
                total += kv[0].numel() * kv.element_size() // self._block_size
        return total
