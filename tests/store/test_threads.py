"""One BlockStore shared by several threads: each stores its own chains, loads them back and
checks the bytes, while another thread matches, evicts and refreshes. Nothing may be lost,
mixed up or raise, and a load of a block evicted meanwhile is a miss, never wrong bytes."""
import threading

import numpy as np

from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

NUM_WORKERS, ROUNDS, CHAIN = 3, 12, 4


def worker(store, seed, errors):
    rng = np.random.default_rng(seed)
    try:
        for _ in range(ROUNDS):
            keys = rng.integers(0, 256, (CHAIN, 32), dtype=np.uint8)
            src = store.pool.alloc(CHAIN)
            dst = store.pool.alloc(CHAIN)
            try:
                expected = [rng.integers(0, 256, store.pool.slot_bytes, dtype=np.uint8)
                            for _ in range(CHAIN)]
                for slot, data in zip(src, expected):
                    store.pool.view(slot)[:] = data
                assert store.wait(store.store(keys, src), timeout=60).all()
                ok = store.wait(store.load(keys, dst), timeout=60)
                header = store.layout.header_bytes
                for slot, data, is_ok in zip(dst, expected, ok):
                    if is_ok:  # False only if the evicting thread removed it in between
                        assert np.array_equal(store.pool.view(slot)[header:], data[header:])
            finally:
                store.pool.free(src)
                store.pool.free(dst)
    except Exception as exc:  # reported to the main thread, which fails the test
        errors.append(exc)


def churn(store, stop, errors):
    try:
        while not stop.is_set():
            store.evict(store.layout.full_block_bytes * 2)
            store.match(np.zeros((3, 32), np.uint8))
            store.stats()
            stop.wait(0.002)  # churn, but leave the workers the GIL
    except Exception as exc:
        errors.append(exc)


def test_threads_share_one_store(block_root):
    layout = KVLayout(4, 1024, 16)
    store = BlockStore(StoreConfig(block_root, layout, pool_slots=2 * CHAIN * NUM_WORKERS,
                                   queue_depth=8, cuda="off"))
    errors, stop = [], threading.Event()
    threads = [threading.Thread(target=worker, args=(store, seed, errors))
               for seed in range(NUM_WORKERS)]
    churner = threading.Thread(target=churn, args=(store, stop, errors))
    churner.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    churner.join(60)
    assert not any(t.is_alive() for t in threads + [churner])
    assert errors == []
    stats = store.stats()
    assert stats["corrupt"] == 0
    assert stats["pool"]["num_free"] == stats["pool"]["num_slots"]
    store.close()
