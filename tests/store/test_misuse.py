"""Calls a store cannot honour get a clear dualkv error, never an AttributeError or blocks
indexed that were never stored (issue 16, item 12): another store's handle, any call after
close(), a damaged meta file."""
import json
import os
import threading

import numpy as np
import pytest

from dualkv.errors import InvalidArgument
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig
from dualkv.store.config import META_NAME

LAYOUT = KVLayout(2, 64, 16)


def open_store(root, **kw):
    return BlockStore(StoreConfig(root, LAYOUT, cuda="off", pool_slots=4, **kw))


def random_keys(seed, n):
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


@pytest.mark.parametrize("verb", ["wait", "wait_status", "poll", "release", "finished_at"])
def test_a_handle_of_another_store_is_refused(block_root, verb):
    a = open_store(os.path.join(block_root, "a"))
    b = open_store(os.path.join(block_root, "b"))
    b_handle = b.store(random_keys(1, 2), b.pool.alloc(2))  # b's batch: its id is 1 in b
    a_keys = random_keys(2, 2)
    a_handle = a.store(a_keys, a.pool.alloc(2))             # a's batch: its id is 1 in a too
    assert a_handle.id == b_handle.id
    with pytest.raises(InvalidArgument, match="another store"):
        getattr(b, verb)(a_handle)
    assert b.match(a_keys) == 0, "b indexed keys it never stored"
    assert b.wait(b_handle).all() and a.wait(a_handle).all()
    with pytest.raises(InvalidArgument, match="expected a Handle"):
        getattr(a, verb)(a_handle.id)


CALLS = {
    "match": lambda s, k: s.match(k),
    "contains": lambda s, k: s.contains(k),
    "load": lambda s, k: s.load(k, [0]),
    "store": lambda s, k: s.store(k, [0]),
    "wait": lambda s, k: s.wait(s.handle),
    "poll": lambda s, k: s.poll(s.handle),
    "release": lambda s, k: s.release(s.handle),
    "finished_at": lambda s, k: s.finished_at(s.handle),
    "evict": lambda s, k: s.evict(1),
    "refresh": lambda s, k: s.refresh(),
    "stats": lambda s, k: s.stats(),
    "pin": lambda s, k: s.pin(k),
    "backend": lambda s, k: s.backend,
    "pool": lambda s, k: s.pool.alloc(1),
    "io": lambda s, k: s.io.stats(),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_calls_after_close_are_invalid_argument(block_root, call):
    store = open_store(block_root)
    keys = random_keys(3, 1)
    store.handle = store.load(keys, store.pool.alloc(1))  # in flight when closed
    store.close()
    store.close()  # a second close is harmless
    assert store.is_closed
    with pytest.raises(InvalidArgument, match="is closed"):
        call(store, keys)


@pytest.mark.parametrize("text", [
    "[]", "7", '"x"', "null", "{not json", "\xff\xfe",
    json.dumps({"num_layers": 2}),
    json.dumps({"num_layers": "2", "bytes_per_token_layer": 64, "block_tokens": 16,
                "key_bytes": 32}),
    json.dumps({"num_layers": True, "bytes_per_token_layer": 64, "block_tokens": 16,
                "key_bytes": 32}),
    json.dumps({"num_layers": 2, "bytes_per_token_layer": 64, "block_tokens": 16,
                "key_bytes": 32, "model_id": 5}),
], ids=["list", "number", "string", "null", "not-json", "not-utf8", "missing", "str-int",
        "bool", "model-id"])
def test_a_damaged_meta_file_is_invalid_argument(block_root, text):
    cfg = StoreConfig(block_root, LAYOUT, cuda="off", pool_slots=1)
    open_store(block_root).close()
    with open(os.path.join(cfg.directory, META_NAME), "w", encoding="latin-1") as f:
        f.write(text)
    with pytest.raises(InvalidArgument, match="meta file"):
        open_store(block_root)


def test_a_fifo_as_meta_file_is_refused_not_waited_on(block_root):
    cfg = StoreConfig(block_root, LAYOUT, cuda="off", pool_slots=1)
    open_store(block_root).close()
    meta = os.path.join(cfg.directory, META_NAME)
    os.unlink(meta)
    os.mkfifo(meta)
    result = {}

    def reopen():
        try:
            open_store(block_root)
        except InvalidArgument as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=reopen, daemon=True)
    thread.start()
    thread.join(30.0)
    is_stuck = thread.is_alive()
    if is_stuck:  # release an open waiting for a writer, so the failing run still ends
        os.close(os.open(meta, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30.0)
    assert not is_stuck, "opening the store waited on a FIFO meta file"
    assert "not a regular file" in result["error"]
