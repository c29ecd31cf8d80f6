"""What a damaged file, a FIFO or a folder at a block path does (issue 16, items 9 and 10):
a store replaces a damaged file instead of acknowledging it, and a path that is not a file
is a miss (or a failed store) for that one block, never a hang or a store-wide change."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

import block_ids
from block_ids import key_of, keys_of

LAYOUT = KVLayout(num_layers=4, bytes_per_token_layer=4096, block_tokens=16)  # 64 KiB layers
DEADLINE_S = 30.0


def open_store(root, backend="auto"):
    return BlockStore(StoreConfig(root, LAYOUT, io_backend=backend, cuda="off", pool_slots=4))


def content_of(i: int) -> np.ndarray:
    return block_ids.content_of(i, LAYOUT)


def store_blocks(store, ids):
    slots = store.pool.alloc(len(ids))
    for slot, i in zip(slots, ids):
        store.pool.view(slot)[:] = content_of(i)
    ok = store.wait(store.store(keys_of(ids), slots), timeout=DEADLINE_S)
    store.pool.free(slots)
    return ok


def load_blocks(store, ids):
    """ok per block, and whether each loaded block holds its content."""
    slots = store.pool.alloc(len(ids))
    ok = store.wait(store.load(keys_of(ids), slots), timeout=DEADLINE_S)
    head = LAYOUT.header_bytes
    same = [bool(np.array_equal(store.pool.view(s)[head:], content_of(i)[head:]))
            for s, i in zip(slots, ids)]
    store.pool.free(slots)
    return ok, same


def path_of(store, i) -> str:
    return store.io.path_of(key_of(i)[0].tobytes())


def damage(path, kind):
    if kind == "payload byte":
        with open(path, "r+b") as f:
            f.seek(LAYOUT.layer_offset(2) + 7)
            f.write(b"\x5a\xa5")
    elif kind == "header byte":
        with open(path, "r+b") as f:
            f.seek(40)
            f.write(b"\xff")
    elif kind == "truncated":
        os.truncate(path, LAYOUT.full_block_bytes // 2)
    elif kind == "empty":
        os.truncate(path, 0)


def put_fifo(path):
    os.unlink(path) if os.path.lexists(path) else os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)


def put_folder(path):
    os.unlink(path) if os.path.lexists(path) else os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(path)


def ends_within(fn, fifo, timeout=DEADLINE_S):
    """Runs fn in a thread; True when it returned before `timeout`. A call stuck opening the
    FIFO is released by opening its other end, so a failing run still ends."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    is_stuck = thread.is_alive()
    if is_stuck:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout)
    return not is_stuck, result.get("value")


@pytest.mark.parametrize("kind", ["payload byte", "header byte", "truncated", "empty"])
def test_store_over_a_damaged_file_replaces_it(block_root, io_backend, kind):
    store = open_store(block_root, io_backend)
    assert store_blocks(store, [1, 2]).all()
    damage(path_of(store, 1), kind)
    assert store_blocks(store, [1, 2]).all()  # 1 is rewritten, 2 is intact and skipped
    ok, same = load_blocks(open_store(block_root, io_backend), [1, 2])
    assert ok.all() and all(same), "an acknowledged store left the damaged file in place"
    stats = store.stats()
    assert stats["stores_replaced_damaged"] == 1 and stats["stores_skipped_existing"] == 1


def test_store_over_a_fifo_replaces_it(block_root):
    store = open_store(block_root)
    put_fifo(path_of(store, 3))
    ended, result = ends_within(lambda: (store_blocks(store, [3]), load_blocks(store, [3])),
                                path_of(store, 3))
    assert ended, "the FIFO was acknowledged as a block and a load waited on it"
    stored, (ok, same) = result
    assert stored.all() and ok.all() and all(same)


def test_fifo_at_a_block_path_is_one_miss_not_a_hang(block_root, io_backend):
    store = open_store(block_root, io_backend)
    assert store_blocks(store, [1, 2]).all()
    fifo = path_of(store, 9)
    put_fifo(fifo)
    ended, result = ends_within(lambda: load_blocks(store, [1, 9, 2]), fifo)
    assert ended, "load() waited on the FIFO"
    ok, same = result
    assert ok.tolist() == [True, False, True] and same[0] and same[2]
    assert store.stats()["corrupt"] == 1
    ended, reopened = ends_within(lambda: open_store(block_root, io_backend), fifo)
    assert ended, "reopening the store waited on the FIFO"
    assert reopened.num_dropped_on_open == 1 and reopened.contains(keys_of([1, 2])).all()
    assert os.path.exists(fifo)  # not a file a store wrote: reported, left alone


def test_store_verify_ends_with_a_fifo_in_the_store(block_root):
    store = open_store(block_root)
    assert store_blocks(store, [1]).all()
    put_fifo(path_of(store, 9))
    store.close()  # verify opens the store itself
    out = subprocess.run([sys.executable, "-m", "dualkv.cli", "store", "verify", block_root],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "bad=1" in out.stdout, out.stdout + out.stderr


def test_folder_at_a_block_path_fails_that_block_only(block_root, io_backend):
    store = open_store(block_root, io_backend)
    assert store_blocks(store, [1, 2]).all()
    assert load_blocks(store, [1])[0].all()
    if not store.stats()["direct_reads"]:
        pytest.skip("this filesystem takes no O_DIRECT reads")
    put_folder(path_of(store, 9))
    ok, same = load_blocks(store, [1, 9, 2])
    assert ok.tolist() == [True, False, True] and same[0] and same[2]
    assert store.stats()["direct_reads"], "one folder turned direct reads off for every block"
    slots = store.pool.alloc(2)
    ok, err, _ = store.wait_status(store.store(keys_of([9, 10]), slots), timeout=DEADLINE_S)
    assert ok.tolist() == [False, True] and err != 0
    assert open_store(block_root, io_backend).contains(keys_of([1, 2, 10])).all()
