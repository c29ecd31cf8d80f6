"""Store the KV-cache of a prompt's full blocks, reopen the store, find the longest stored
prefix of a longer prompt and read those blocks (all layers, then one layer range) back.

    python examples/store_roundtrip.py /tmp/dualkv-blocks
"""
import sys
import tempfile

import numpy as np

from dualkv import KVLayout
from dualkv.store import BlockStore, StoreConfig

root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dualkv-blocks-")
layout = KVLayout.gqa(num_layers=4, num_kv_heads=2, head_dim=64, dtype="bf16")  # 64 tokens/block
cfg = StoreConfig(root, layout, model_id="tiny-gqa", pool_slots=32)

prompt = np.random.default_rng(0).integers(0, 32000, 64 * 6 + 10, dtype=np.int32)
with BlockStore(cfg) as store:
    keys = store.chain_keys(prompt)                       # 6 full blocks; the 10 tokens wait
    slots = store.pool.alloc(len(keys))
    for i, slot in enumerate(slots):                      # an engine copies its KV in here
        for layer in range(layout.num_layers):
            store.pool.layer_view(slot, layer)[:] = (i + layer) % 251
    handle = store.store(keys, slots)
    store.wait(handle, timeout=30)
    store.release(handle)
    store.pool.free(slots)

with BlockStore(cfg) as store:                            # reopening rebuilds the index
    turn2 = np.concatenate([prompt, np.arange(200, dtype=np.int32)])
    keys = store.chain_keys(turn2)
    hit = store.match(keys)
    print(f"backend {store.backend}, pool on {store.pool.page_kind} pages: "
          f"{hit} of {len(keys)} blocks stored")
    slots = store.pool.alloc(hit)
    ok = store.wait(store.load(keys[:hit], slots), timeout=30)
    assert ok.all() and (store.pool.layer_view(slots[3], 2) == 5).all()
    ok = store.wait(store.load(keys[:hit], slots, layers=(1, 3)), timeout=30)  # layerwise
    print(f"loaded and verified {int(ok.sum())} blocks; stats: "
          f"{ {k: store.stats()[k] for k in ('hits', 'blocks_loaded', 'bytes_read')} }")
