"""BlockStore round trips and argument checking, on both I/O backends."""
import time

import numpy as np
import pytest

from dualkv.errors import InvalidArgument, NotFound, StorageError, TimedOut
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig



def open_store(root, layout, backend="auto", **kw):
    return BlockStore(StoreConfig(root, layout, io_backend=backend, cuda="off",
                                  pool_slots=kw.pop("pool_slots", 16), **kw))


def random_keys(rng, n):
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def fill(store, slots, rng):
    for slot in slots:
        store.pool.view(slot)[:] = rng.integers(0, 256, store.pool.slot_bytes, dtype=np.uint8)


def layer_bytes(store, slot, layer):
    return store.pool.layer_view(slot, layer).tobytes()


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_random_layouts_and_layer_ranges(block_root, io_backend, seed):
    rng = np.random.default_rng(seed)
    layout = KVLayout(int(rng.integers(1, 9)), int(rng.integers(1, 700)),
                      int(rng.choice([1, 16, 64])))
    store = open_store(block_root, layout, io_backend, queue_depth=int(rng.choice([1, 4, 32])))
    assert store.backend == io_backend
    n = 6
    keys, src = random_keys(rng, n), store.pool.alloc(n)
    fill(store, src, rng)
    assert store.wait(store.store(keys, src)).all()
    assert store.match(keys) == n
    for _ in range(3):
        first = int(rng.integers(0, layout.num_layers))
        last = int(rng.integers(first + 1, layout.num_layers + 1))
        dst = store.pool.alloc(n)
        store.pool.array()[dst] = 0
        handle = store.load(keys, dst, layers=(first, last))
        assert store.wait(handle, timeout=30).all()
        store.release(handle)
        for a, b in zip(src, dst):
            for layer in range(layout.num_layers):
                got, want = layer_bytes(store, b, layer), layer_bytes(store, a, layer)
                if first <= layer < last:
                    assert got == want
                else:
                    assert got == bytes(len(got))  # layers outside the range are untouched
        store.pool.free(dst)


@pytest.mark.parametrize("aligned", [True, False])
def test_load_into_and_store_from_raw_addresses(block_root, io_backend, aligned):
    rng = np.random.default_rng(7)
    layout = KVLayout(4, 256 if aligned else 100, 16)  # 4096-byte Layer Blocks, or odd ones
    store = open_store(block_root, layout, io_backend)
    n, lbb = 3, layout.layer_block_bytes
    page = 4096
    raw = np.zeros(n * layout.num_layers * lbb + 2 * page, dtype=np.uint8)
    base = (-raw.ctypes.data) % page + (0 if aligned else 8)
    src = raw[base:base + n * layout.num_layers * lbb].reshape(n, layout.num_layers, lbb)
    src[:] = rng.integers(0, 256, src.shape, dtype=np.uint8)
    src_ptrs = src.ctypes.data + lbb * np.arange(n * layout.num_layers).reshape(n, -1)
    keys = random_keys(rng, n)
    assert store.wait(store.store_from(keys, src_ptrs)).all()
    dst = np.zeros_like(raw)
    dst_base = (-dst.ctypes.data) % page + (0 if aligned else 8)
    out = dst[dst_base:dst_base + n * 2 * lbb].reshape(n, 2, lbb)
    dst_ptrs = out.ctypes.data + lbb * np.arange(n * 2).reshape(n, 2)
    assert store.wait(store.load_into(keys, dst_ptrs, layers=(1, 3))).all()
    assert np.array_equal(out, src[:, 1:3])
    bounced = store.stats()["bounce_bytes"]
    # O_DIRECT-ready sources and destinations move in place; odd ones go through a copy (a
    # gathered block image for store_from, a slot for load_into)
    assert bounced == (0 if aligned else n * layout.num_layers * lbb + n * 2 * lbb)
    # what store_from wrote in place is the same file a store from a slot writes
    slots = store.pool.alloc(1)
    view = store.pool.view(slots[0])
    for layer in range(layout.num_layers):
        start = layout.layer_offset(layer)
        view[start:start + lbb] = src[0, layer]
    other = random_keys(rng, 1)
    assert store.wait(store.store(other, slots)).all()
    files = [store.io.path_of(bytes(k)) for k in (keys[0], other[0])]
    blocks = [open(f, "rb").read() for f in files]
    head = layout.header_bytes
    assert len(blocks[0]) == len(blocks[1]) == layout.full_block_bytes
    assert blocks[0][head:] == blocks[1][head:]


def test_missing_block_is_a_miss_not_an_error(block_root, io_backend):
    store = open_store(block_root, KVLayout(2, 64, 16), io_backend)
    rng = np.random.default_rng(1)
    keys, slots = random_keys(rng, 2), store.pool.alloc(2)
    store.wait(store.store(keys[:1], slots[:1]))
    ok = store.wait(store.load(keys, slots))
    assert ok.tolist() == [True, False]
    assert store.stats()["missing"] == 1


def test_prefix_match_follows_the_chain(block_root):
    store = open_store(block_root, KVLayout(2, 64, 16))
    rng = np.random.default_rng(2)
    keys, slots = random_keys(rng, 5), store.pool.alloc(5)
    store.wait(store.store(keys[:3], slots[:3]))
    assert store.match(keys) == 3
    assert store.contains(keys).tolist() == [True, True, True, False, False]
    store.wait(store.store(keys[3:], slots[3:], parent=keys[2]))
    assert store.match(keys) == 5
    assert store.match(keys[1:]) == 4  # a chain may start inside a stored chain
    assert store.match(np.concatenate([keys[:2], keys[3:]])) == 2


def test_reopen_rebuilds_the_index(block_root):
    layout = KVLayout(3, 128, 16)
    store = open_store(block_root, layout)
    rng = np.random.default_rng(3)
    keys, slots = random_keys(rng, 8), store.pool.alloc(8)
    fill(store, slots, rng)
    store.wait(store.store(keys, slots))
    want = [layer_bytes(store, s, 2) for s in slots]
    store.close()
    store = open_store(block_root, layout)
    assert store.match(keys) == 8
    dst = store.pool.alloc(8)
    assert store.wait(store.load(keys, dst, layers=(2, 3))).all()
    assert [layer_bytes(store, s, 2) for s in dst] == want


def test_evict_deletes_unpinned_leaves_and_pins_protect(block_root):
    layout = KVLayout(2, 64, 16)
    store = open_store(block_root, layout)
    rng = np.random.default_rng(4)
    keys, slots = random_keys(rng, 4), store.pool.alloc(4)
    store.wait(store.store(keys, slots))
    store.pin(keys[3:])
    assert store.evict(layout.full_block_bytes) == 0  # the only leaf is pinned
    store.unpin(keys[3:])
    assert store.evict(2 * layout.full_block_bytes) == 2 * layout.full_block_bytes
    assert store.match(keys) == 2
    assert not store.wait(store.load(keys[2:3], slots[:1]))[0]  # the file is gone too


def test_capacity_evicts_on_store(block_root):
    layout = KVLayout(2, 64, 16)
    store = open_store(block_root, layout, capacity_bytes=3 * layout.full_block_bytes)
    rng = np.random.default_rng(5)
    first, second = random_keys(rng, 3), random_keys(rng, 2)
    slots = store.pool.alloc(3)
    store.wait(store.store(first, slots))
    store.wait(store.store(second, slots[:2]))
    assert store.stats()["num_blocks"] <= 3
    assert store.match(second) == 2


def test_wait_status_reports_a_failed_store_and_wait_raises_it(block_root):
    import errno
    import os

    store = open_store(block_root, KVLayout(2, 64, 16))
    keys = random_keys(np.random.default_rng(9), 2)
    folder = os.path.dirname(store.io.path_of(keys[1].tobytes()))
    assert folder != os.path.dirname(store.io.path_of(keys[0].tobytes()))
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    open(folder, "w").close()  # a file where the block's folder goes: ENOTDIR on store
    slots = store.pool.alloc(2)
    ok, err, message = store.wait_status(store.store(keys, slots))
    assert ok.tolist() == [True, False]
    assert err == errno.ENOTDIR and os.strerror(errno.ENOTDIR) in message
    assert store.contains(keys).tolist() == [True, False]
    with pytest.raises(StorageError) as info:
        store.wait(store.store(keys[1:], slots[1:]))
    assert info.value.errno == errno.ENOTDIR
    ok, err, message = store.wait_status(store.store(keys[:1], slots[:1]))
    assert ok.all() and err == 0 and message == ""


def test_handles_poll_release_and_unknown(block_root):
    store = open_store(block_root, KVLayout(2, 64, 16))
    keys, slots = random_keys(np.random.default_rng(6), 2), store.pool.alloc(2)
    handle = store.store(keys, slots)
    while not store.poll(handle):
        pass
    assert store.match(keys) == 2  # a finished poll publishes to the index
    store.release(handle)
    with pytest.raises(NotFound):
        store.wait(handle)


def test_finished_at_is_when_the_batch_finished_not_when_it_was_seen(block_root):
    store = open_store(block_root, KVLayout(4, 4096, 16))
    keys, slots = random_keys(np.random.default_rng(8), 8), store.pool.alloc(8)
    for op in (lambda: store.store(keys, slots), lambda: store.load(keys, slots)):
        submitted = time.monotonic()
        handle = op()
        done = store.finished_at(handle)
        assert done is None or submitted <= done <= time.monotonic()  # None: still in flight
        assert store.wait(handle).all()
        seen = time.monotonic()
        time.sleep(0.05)  # a late look must not move it
        done = store.finished_at(handle)
        assert submitted <= done <= seen and store.finished_at(handle) == done
        store.release(handle)
        with pytest.raises(NotFound):
            store.finished_at(handle)


@pytest.mark.parametrize("call", [
    lambda s, k, sl: s.load(k[:, :16].copy(), sl),                 # wrong key length
    lambda s, k, sl: s.load([b"short"], sl[:1]),
    lambda s, k, sl: s.load(k, sl[:1]),                             # too few slots
    lambda s, k, sl: s.load(k, np.array([0, 99])),                  # slot out of range
    lambda s, k, sl: s.load(k, np.array([0, -1])),
    lambda s, k, sl: s.load(k, np.array([3, 3])),                   # same slot twice
    lambda s, k, sl: s.load(k, np.array([0.5, 1.0])),               # not ints
    lambda s, k, sl: s.load(k, sl, layers=(1, 1)),                  # empty layer range
    lambda s, k, sl: s.load(k, sl, layers=(0, 9)),
    lambda s, k, sl: s.load_into(k, np.zeros((2, 1), np.int64), layers=(0, 2)),
    lambda s, k, sl: s.load_into(k, np.zeros((2, 2), np.int64)),   # null addresses
    lambda s, k, sl: s.store(k, sl, parent=b"x"),                   # parent too short
    lambda s, k, sl: s.store_from(k, np.zeros((2, 3), np.int64)),
    lambda s, k, sl: s.evict(-1),
])
def test_bad_arguments_are_invalid_argument(block_root, call):
    store = open_store(block_root, KVLayout(2, 64, 16))
    keys, slots = random_keys(np.random.default_rng(8), 2), store.pool.alloc(2)
    with pytest.raises(InvalidArgument):
        call(store, keys, slots)


def test_layout_mismatch_on_open(block_root):
    open_store(block_root, KVLayout(2, 64, 16), namespace="shared").close()
    with pytest.raises(InvalidArgument, match="layout mismatch"):
        open_store(block_root, KVLayout(3, 64, 16), namespace="shared")


def test_config_is_validated(block_root):
    with pytest.raises(InvalidArgument):
        StoreConfig(block_root, KVLayout(2, 64, 16), io_backend="spdk")
    with pytest.raises(InvalidArgument):
        StoreConfig(block_root, KVLayout(2, 64, 16), queue_depth=0)


def test_different_models_do_not_share_blocks(block_root):
    layout = KVLayout(2, 64, 16)
    a = open_store(block_root, layout, model_id="a")
    b = open_store(block_root, layout, model_id="b")
    keys, slots = random_keys(np.random.default_rng(9), 1), a.pool.alloc(1)
    a.wait(a.store(keys, slots))
    assert a.match(keys) == 1 and b.match(keys) == 0
    assert not b.wait(b.load(keys, b.pool.alloc(1)))[0]


def test_chain_keys_name_blocks_by_their_tokens(block_root):
    store = open_store(block_root, KVLayout(2, 64, 16))
    tokens = np.arange(16 * 5 + 3, dtype=np.int32)
    keys = store.chain_keys(tokens)
    assert keys.shape == (5, 32)  # the partial last block gets no key
    store.wait(store.store(keys[:4], store.pool.alloc(4)))
    longer = store.chain_keys(np.concatenate([tokens[:64], tokens[:32] + 1000]))
    assert store.match(longer) == 4
    with pytest.raises(InvalidArgument):
        store.chain_keys(np.arange(32, dtype=np.int64) + 2**40)  # not representable as int32
    with pytest.raises(InvalidArgument):
        store.chain_keys(np.ones(32, dtype=np.float32))


def test_blocks_of_another_process_join_by_probe_or_refresh(block_root):
    layout = KVLayout(2, 64, 16)
    reader, writer = open_store(block_root, layout), open_store(block_root, layout)
    keys = random_keys(np.random.default_rng(10), 6)
    writer.wait(writer.store(keys[:4], writer.pool.alloc(4)))
    assert reader.match(keys) == 0  # its index has not seen them
    assert reader.match(keys[:2], probe_disk=True) == 2
    assert reader.match(keys, probe_disk=True) == 4  # stops at the first block not on disk
    writer.wait(writer.store(keys[4:], writer.pool.alloc(2), parent=keys[3]))
    assert reader.refresh() == 2
    assert reader.match(keys) == 6


def test_wait_has_a_deadline(block_root):
    layout = KVLayout(4, 8192, 64)  # 2 MiB blocks
    store = open_store(block_root, layout, "posix", queue_depth=1, pool_slots=32)
    keys, slots = random_keys(np.random.default_rng(11), 32), store.pool.alloc(32)
    store.wait(store.store(keys, slots), timeout=120)
    handle = store.load(keys, slots)  # 64 MiB through one reader thread
    with pytest.raises(TimedOut):
        store.wait(handle, timeout=0.001)
    store.release(handle, timeout=120)  # waits for what is in flight, then frees
    with pytest.raises(InvalidArgument):
        store.wait(store.load(keys[:1], slots[:1]), timeout=-1)


def test_empty_batches(block_root):
    store = open_store(block_root, KVLayout(2, 64, 16))
    empty = np.zeros((0, 32), np.uint8)
    assert store.wait(store.load(empty, np.zeros(0, np.int64))).shape == (0,)
    assert store.wait(store.store(empty, np.zeros(0, np.int64))).shape == (0,)
    assert store.match(empty) == 0


def test_root_that_cannot_be_a_folder_is_a_storage_error(block_root):
    import errno
    import os

    blocker = os.path.join(block_root, "file")
    open(blocker, "w").close()
    with pytest.raises(StorageError) as info:
        open_store(os.path.join(blocker, "store"), KVLayout(2, 64, 16))
    assert info.value.errno == errno.ENOTDIR


@pytest.mark.parametrize("key_bytes", [16, 64])
def test_other_key_lengths(block_root, key_bytes):
    store = BlockStore(StoreConfig(block_root, KVLayout(2, 64, 16), key_bytes=key_bytes,
                                   pool_slots=4, cuda="off"))
    keys = np.random.default_rng(12).integers(0, 256, (3, key_bytes), dtype=np.uint8)
    slots = store.pool.alloc(3)
    assert store.wait(store.store(keys, slots)).all()
    store.close()
    store = BlockStore(StoreConfig(block_root, KVLayout(2, 64, 16), key_bytes=key_bytes,
                                   pool_slots=4, cuda="off"))
    assert store.match(keys) == 3
    with pytest.raises(InvalidArgument):
        store.match(np.zeros((1, 32), np.uint8) if key_bytes != 32 else None)


def test_concurrent_batches_from_threads(block_root, io_backend):
    import threading

    layout = KVLayout(4, 512, 16)
    store = open_store(block_root, layout, io_backend, queue_depth=4, pool_slots=64)
    rng = np.random.default_rng(13)
    keys, src = random_keys(rng, 16), store.pool.alloc(16)
    fill(store, src, rng)
    store.wait(store.store(keys, src))
    want = {i: [layer_bytes(store, s, l) for l in range(4)] for i, s in enumerate(src)}
    errors = []

    def reader(seed):
        r = np.random.default_rng(seed)
        dst = store.pool.alloc(8)
        for _ in range(20):
            ids = r.choice(16, 8, replace=False)
            first = int(r.integers(0, 4))
            last = int(r.integers(first + 1, 5))
            handle = store.load(keys[ids], dst, layers=(first, last))
            if not store.wait(handle, timeout=30).all():
                errors.append("miss")
            store.release(handle)
            for i, slot in zip(ids, dst):
                for layer in range(first, last):
                    if layer_bytes(store, slot, layer) != want[i][layer]:
                        errors.append((i, layer))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("layers", [range(0, 4, 2), (0.5, 2), (0, 2.0), (True, 2), range(2, 0, -1)])
def test_layer_ranges_are_integer_and_contiguous(block_root, layers):
    """range(0, 4, 2) loaded layers 0-1 and reported success with layer 2 stale; float bounds
    were truncated. Both are refused before any I/O."""
    from dualkv.layout import KVLayout
    from dualkv.store import BlockStore, StoreConfig

    layout = KVLayout(num_layers=4, bytes_per_token_layer=64, block_tokens=16)
    with BlockStore(StoreConfig(block_root, layout, pool_slots=2, cuda="off")) as store:
        keys = store.chain_keys(np.arange(16, dtype=np.int32))
        slots = store.pool.alloc(1)
        with pytest.raises(InvalidArgument, match="layers"):
            store.load(keys, slots, layers=layers)
        assert store.wait(store.load(keys, slots, layers=range(1, 3)), 10, check=False).shape == (1,)
