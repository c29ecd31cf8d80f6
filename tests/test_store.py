"""BlockStore round trips and argument checking, on both I/O backends."""
import numpy as np
import pytest

from dualkv.errors import InvalidArgument, NotFound
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

BACKENDS = ["io_uring", "posix"]


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_round_trip_random_layouts_and_layer_ranges(block_root, backend, seed):
    rng = np.random.default_rng(seed)
    layout = KVLayout(int(rng.integers(1, 9)), int(rng.integers(1, 700)),
                      int(rng.choice([1, 16, 64])))
    store = open_store(block_root, layout, backend, queue_depth=int(rng.choice([1, 4, 32])))
    assert store.backend == backend
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned", [True, False])
def test_load_into_and_store_from_raw_addresses(block_root, backend, aligned):
    rng = np.random.default_rng(7)
    layout = KVLayout(4, 256 if aligned else 100, 16)  # 4096-byte Layer Blocks, or odd ones
    store = open_store(block_root, layout, backend)
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
    # store_from always gathers; loads bounce only when the destination is not O_DIRECT-ready
    assert bounced == n * layout.num_layers * lbb + (0 if aligned else n * 2 * lbb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_block_is_a_miss_not_an_error(block_root, backend):
    store = open_store(block_root, KVLayout(2, 64, 16), backend)
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
    assert store.match(keys[1:]) == 0 or store.match(keys[1:]) == 4  # index-defined roots
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
