"""Two processes on one store while block files are damaged: a load that finds a damaged
file removes that file only, never a good block another process has published at its path
since (issue 16, item 8)."""
import multiprocessing
import os

import numpy as np

from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

import block_ids
from block_ids import key_of, keys_of

LAYOUT = KVLayout(num_layers=8, bytes_per_token_layer=8192, block_tokens=16)  # ~1 MiB blocks
NUM_SLOW = 64   # good blocks read ahead of the damaged ones in the loader's one reader queue
NUM_RACED = 4   # damaged blocks per round, republished by the writer while their reads wait
MAX_ROUNDS = 6
DEADLINE_S = 120.0


def open_store(root, **kw):
    # posix on one reader thread: the loader's reads run in the order the batch lists them
    return BlockStore(StoreConfig(root, LAYOUT, cuda="off", io_backend="posix", queue_depth=1,
                                  pool_slots=kw.pop("pool_slots", NUM_RACED), **kw))


def content_of(i: int) -> np.ndarray:
    return block_ids.content_of(i, LAYOUT)


def write_on_request(root, conn):
    """The second process: stores the keys it is sent (good content) and answers once they
    are acknowledged."""
    store = open_store(root)
    slots = store.pool.alloc(NUM_RACED)
    while conn.poll(DEADLINE_S):
        ids = conn.recv()
        if ids is None:
            break
        for slot, i in zip(slots, ids):
            store.pool.view(slot)[:] = content_of(i)
        ok = store.wait(store.store(keys_of(ids), slots[:len(ids)]), timeout=DEADLINE_S)
        conn.send(ok.tolist())
    store.close()


def plant_damaged(store, ids, slot):
    """A damaged file at each block path: a whole block image with one payload byte flipped."""
    for i in ids:
        image = content_of(i).copy()
        store.pool.view(slot)[:] = image
        store.wait(store.store(key_of(i), [slot]), timeout=DEADLINE_S)
        path = store.io.path_of(key_of(i)[0].tobytes())
        with open(path, "r+b") as f:
            f.seek(LAYOUT.header_bytes + 100)
            byte = f.read(1)
            f.seek(LAYOUT.header_bytes + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
        store.index.remove(key_of(i))


def run_round(store, slow_ids, raced_ids, slots, conn):
    """Opens the damaged files (a load's opens all happen before load() returns), unlinks
    them so the writer writes afresh, then has the writer publish good blocks there while the
    loader's reads of them still wait behind the slow blocks. Returns the writer's acks."""
    handle = store.load(keys_of(list(slow_ids) + list(raced_ids)), slots)
    for i in raced_ids:
        os.unlink(store.io.path_of(key_of(i)[0].tobytes()))
    conn.send(list(raced_ids))
    assert conn.poll(DEADLINE_S), "the writer process did not answer"
    acked = conn.recv()
    ok = store.wait(handle, timeout=DEADLINE_S)
    assert ok[:len(slow_ids)].all() and not ok[len(slow_ids):].any()
    return [i for i, is_ok in zip(raced_ids, acked) if is_ok]


def test_a_damaged_read_never_removes_a_block_published_since(block_root):
    ctx = multiprocessing.get_context("spawn")
    store = open_store(block_root, pool_slots=NUM_SLOW + NUM_RACED)
    slots = store.pool.alloc(NUM_SLOW + NUM_RACED)
    slow_ids = list(range(NUM_SLOW))
    for slot, i in zip(slots, slow_ids):
        store.pool.view(slot)[:] = content_of(i)
    assert store.wait(store.store(keys_of(slow_ids), slots[:NUM_SLOW]), timeout=DEADLINE_S).all()
    here, there = ctx.Pipe()
    writer = ctx.Process(target=write_on_request, args=(block_root, there))
    writer.start()
    try:
        acked, lost = [], []
        for r in range(MAX_ROUNDS):
            raced_ids = range(1000 + r * NUM_RACED, 1000 + (r + 1) * NUM_RACED)
            plant_damaged(store, raced_ids, slots[0])
            round_acked = run_round(store, slow_ids, raced_ids, slots, here)
            acked += round_acked
            present = store.io.exists(keys_of(round_acked))
            lost += [i for i, p in zip(round_acked, present) if not p]
            if store.stats().get("removes_skipped_replaced", 0) > 0:
                break  # the race happened (and was survived) at least once
        here.send(None)
        writer.join(DEADLINE_S)
    finally:
        if writer.is_alive():
            writer.kill()
    assert acked, "the writer acknowledged nothing"
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged blocks vanished: {lost}"
    fresh = open_store(block_root, pool_slots=len(acked))
    ok = fresh.wait(fresh.load(keys_of(acked), fresh.pool.alloc(len(acked))), timeout=DEADLINE_S)
    assert ok.all(), "an acknowledged block no longer loads"
    assert store.stats()["removes_skipped_replaced"] > 0, (
        "no round published a block while its damaged predecessor was being read")
