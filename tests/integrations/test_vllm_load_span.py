"""The connector's timed load span (stats["load_s"], the figure `dualkv bench vllm` reports)
ends when the data is in vLLM's pages, as ExampleConnector's does: on the staged path that is
after the scatter from pool slots, not when the store's read completes."""
import time

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from dualkv.integrations.vllm.config import ConnectorConfig  # noqa: E402
from dualkv.integrations.vllm.metadata import LoadSpec  # noqa: E402
from dualkv.integrations.vllm.transfers import LoadBatch  # noqa: E402
from dualkv.integrations.vllm.worker import WorkerSide  # noqa: E402
from dualkv.layout import KVLayout  # noqa: E402
from dualkv.store import BlockStore, StoreConfig  # noqa: E402

NUM_LAYERS, NUM_BLOCKS, BLOCK_TOKENS = 2, 8, 16


@pytest.mark.parametrize("layerwise", [False, True])
def test_staged_load_span_ends_after_the_scatter_into_vllms_pages(tmp_path, layerwise):
    # vLLM's CPU layout: [num_blocks, kv_heads, block_size, 2 * head_size] per layer
    caches = {f"model.layers.{l}.self_attn.attn": torch.zeros(NUM_BLOCKS, 2, BLOCK_TOKENS, 128)
              for l in range(NUM_LAYERS)}
    page_bytes = caches["model.layers.0.self_attn.attn"][0].numel() * 4
    layout = KVLayout(NUM_LAYERS, page_bytes // BLOCK_TOKENS, BLOCK_TOKENS)
    config = ConnectorConfig(root=str(tmp_path), load_path="staged", layerwise=layerwise,
                             pool_slots=8)

    def open_store(layout):
        return BlockStore(StoreConfig(str(tmp_path), layout, pool_slots=8, cuda="off"))

    worker = WorkerSide(open_store, config, NUM_BLOCKS, layout)
    worker.register_kv_caches(caches)
    keys = np.random.default_rng(0).integers(0, 256, (3, 32), dtype=np.uint8)
    slots = worker.store.pool.alloc(3)
    worker.store.pool.array()[slots] = np.random.default_rng(1).integers(
        0, 256, (3, layout.full_block_bytes), dtype=np.uint8)
    written = worker.store.pool.array()[slots].copy()
    assert worker.store.wait(worker.store.store(keys, slots), timeout=60).all()
    worker.store.pool.free(slots)

    scatter_ends = []
    real_scatter = worker.kv.scatter

    def scatter(*args):  # the real copy into the pages, its end time noted
        real_scatter(*args)
        scatter_ends.append(time.perf_counter())

    worker.kv.scatter = scatter
    spec = LoadSpec("r0", keys, np.array([5, 1, 6], np.int64), is_async=False)
    batch = LoadBatch.submit(worker, [spec], layerwise=layerwise)
    batch.wait_all()
    assert batch.close() == set()
    assert len(scatter_ends) == NUM_LAYERS
    assert batch.start_s + worker.stats["load_s"] >= max(scatter_ends)
    block_ids = [5, 1, 6]
    for l, name in enumerate(worker.kv.layer_names):  # the data did arrive in vLLM's pages
        at = layout.layer_offset(l)
        for i, block in enumerate(block_ids):
            page = caches[name][block].numpy().view(np.uint8).reshape(-1)
            assert (page == written[i, at:at + layout.layer_block_bytes]).all()
    worker.store.close()
