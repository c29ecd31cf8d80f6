"""DualKVHiCacheStorage loaded the way SGLang's server loads it, and its direct interface."""
import pytest

pytest.importorskip("sglang")

import torch  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import (HiCacheStorageConfig,  # noqa: E402
                                                  HiCacheStorageExtraInfo,
                                                  HiCacheStorageFailureInjector)
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang.srt.observability.metrics_collector import StorageMetrics  # noqa: E402

from dualkv.errors import InvalidArgument  # noqa: E402
from dualkv.integrations.sglang import DualKVHiCacheStorage  # noqa: E402
from dualkv.integrations.sglang_config import page_keys  # noqa: E402
from dualkv.testing.sglang_cpu import make_host_pool  # noqa: E402
from sglang_harness import fill_random, page_keys_of, read_pages  # noqa: E402

PAGE = 16


def storage_config(root, is_mla=False, tp_rank=0, tp_size=1, **extra):
    extra_config = {"backend_name": "dualkv", "module_path": "dualkv.integrations.sglang",
                    "class_name": "DualKVHiCacheStorage", "interface_v1": 1, "root": root,
                    **extra}
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1,
                                attn_cp_rank=0, attn_cp_size=1, is_mla_model=is_mla,
                                enable_storage_metrics=True, is_page_first_layout=False,
                                model_name="org/test-model", extra_config=extra_config)


def create(cfg, pool):
    """Exactly the server's sequence (HiCacheController.attach_storage_backend)."""
    backend = StorageBackendFactory.create_backend("dynamic", cfg, pool)
    backend.register_mem_pool_host(pool)
    backend.on_host_pools_registered()
    return backend


def mha_pool(layout="page_first", num_pages=16):
    return make_host_pool("mha", layout, num_layers=4, page_size=PAGE, num_pages=num_pages,
                          num_kv_heads=2, head_dim=64)


def test_factory_builds_the_backend_from_extra_config(block_root):
    pool = mha_pool()
    backend = create(storage_config(block_root), pool)
    assert type(backend) is DualKVHiCacheStorage
    assert backend.store is not None and backend.geometry.can_direct_io()
    backend.close()


def test_factory_wraps_it_in_the_failure_injector(block_root, monkeypatch):
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE", "0.0")
    pool = mha_pool()
    backend = create(storage_config(block_root), pool)
    assert isinstance(backend, HiCacheStorageFailureInjector)
    assert type(backend._backend) is DualKVHiCacheStorage
    indices = pool.alloc(2 * PAGE)
    fill_random(pool, indices, seed=3)
    keys = page_keys_of(list(range(2 * PAGE)), PAGE)
    assert backend.batch_set_v1(keys, indices) == [True, True]
    assert backend.batch_exists(keys) == 2
    backend.close()


def test_bad_extra_config_fails_the_attach_clearly(block_root):
    with pytest.raises(InvalidArgument, match="root"):
        StorageBackendFactory.create_backend("dynamic", storage_config(""), None)
    with pytest.raises(InvalidArgument, match="unknown dualkv extra config"):
        StorageBackendFactory.create_backend("dynamic", storage_config(block_root, rooot=1), None)


def test_calls_before_a_pool_is_registered_fail_softly(block_root):
    backend = StorageBackendFactory.create_backend("dynamic", storage_config(block_root), None)
    keys = page_keys_of(list(range(PAGE)), PAGE)
    assert backend.batch_get_v1(keys, torch.arange(PAGE)) == [False]
    assert backend.batch_exists(keys) == 0 and backend.exists(keys[0]) is False


def test_generic_interface_round_trip_and_prefix(block_root):
    pool = mha_pool("layer_first")
    backend = create(storage_config(block_root), pool)
    indices = pool.alloc(4 * PAGE)
    pages = fill_random(pool, indices, seed=5)
    keys = page_keys_of(list(range(4 * PAGE)), PAGE)
    values = [pool.get_data_page(i, flat=True) for i in indices[::PAGE].tolist()]
    assert backend.batch_set(keys[:3], values[:3]) is True
    assert backend.exists(keys[0]) and not backend.exists(keys[3])
    assert backend.batch_exists(keys) == 3
    got = backend.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert got[3] is None
    for page, expected in zip(got[:3], pages):
        assert torch.equal(page.view(torch.uint8), expected)
    one = backend.get(keys[1], pool.get_dummy_flat_data_page())
    assert torch.equal(one.view(torch.uint8), pages[1])
    assert backend.set(keys[3], values[3]) is True and backend.batch_exists(keys) == 4


def test_generic_and_v1_pages_are_the_same_bytes(block_root):
    pool = mha_pool("page_first_direct")
    backend = create(storage_config(block_root), pool)
    indices = pool.alloc(2 * PAGE)
    pages = fill_random(pool, indices, seed=6)
    keys = page_keys_of(list(range(100, 100 + 2 * PAGE)), PAGE)
    assert backend.batch_set_v1(keys, indices) == [True, True]
    got = backend.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert all(torch.equal(g.view(torch.uint8), p) for g, p in zip(got, pages))


def test_layer_first_and_page_first_direct_share_pages(block_root):
    writer_pool, reader_pool = mha_pool("layer_first"), mha_pool("page_first_direct")
    writer = create(storage_config(block_root), writer_pool)
    reader = create(storage_config(block_root), reader_pool)
    src = writer_pool.alloc(3 * PAGE)
    pages = fill_random(writer_pool, src, seed=7)
    keys = page_keys_of(list(range(7, 7 + 3 * PAGE)), PAGE)
    assert writer.batch_set_v1(keys, src) == [True] * 3
    dst = reader_pool.alloc(3 * PAGE)
    assert reader.batch_get_v1(keys, dst) == [True] * 3
    assert all(torch.equal(a, b) for a, b in zip(read_pages(reader_pool, dst), pages))


def test_ranks_and_models_do_not_share_pages(block_root):
    pool = mha_pool()
    rank0 = create(storage_config(block_root, tp_rank=0, tp_size=2), pool)
    rank1 = create(storage_config(block_root, tp_rank=1, tp_size=2), pool)
    other_model = create(storage_config(block_root, model_id="other"), pool)
    indices = pool.alloc(PAGE)
    fill_random(pool, indices, seed=8)
    keys = page_keys_of(list(range(PAGE)), PAGE)
    assert rank0.batch_set_v1(keys, indices) == [True]
    assert rank0.batch_exists(keys) == 1
    assert rank1.batch_exists(keys) == 0 and other_model.batch_exists(keys) == 0


def test_mla_only_the_storage_writer_writes(block_root):
    pool = make_host_pool("mla", "page_first", num_layers=2, page_size=PAGE, num_pages=8)
    writer = create(storage_config(block_root, is_mla=True, tp_rank=0, tp_size=2), pool)
    follower = create(storage_config(block_root, is_mla=True, tp_rank=1, tp_size=2), pool)
    indices = pool.alloc(2 * PAGE)
    pages = fill_random(pool, indices, seed=9)
    keys = page_keys_of(list(range(2 * PAGE)), PAGE)
    assert follower.batch_set_v1(keys, indices) == [True, True]  # skipped, by design
    assert follower.batch_exists(keys) == 0
    assert writer.batch_set_v1(keys, indices) == [True, True]
    assert follower.batch_exists(keys) == 2  # published by the writer after follower opened
    dst = pool.alloc(2 * PAGE)
    assert follower.batch_get_v1(keys, dst) == [True, True]  # MLA ranks share one namespace
    assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst), pages))


def test_prefix_keys_link_batches_and_stats_are_sglang_metrics(block_root):
    pool = mha_pool()
    backend = create(storage_config(block_root), pool)
    indices = pool.alloc(4 * PAGE)
    fill_random(pool, indices, seed=10)
    keys = page_keys_of(list(range(4 * PAGE)), PAGE)
    assert backend.batch_set_v1(keys[:2], indices[: 2 * PAGE]) == [True, True]
    info = HiCacheStorageExtraInfo(prefix_keys=keys[:2])
    assert backend.batch_set_v1(keys[2:], indices[2 * PAGE:], info) == [True, True]
    assert backend.store.match(page_keys(keys)) == 4  # one chain of parent links
    assert backend.batch_get_v1(keys, pool.alloc(4 * PAGE)) == [True] * 4
    metrics = backend.get_stats()
    assert isinstance(metrics, StorageMetrics)
    assert metrics.prefetch_pgs == [4] and metrics.backup_pgs == [2, 2]
    totals = metrics.as_dict()
    assert totals["pages_read"] == 4 and totals["pages_written"] == 4
    assert totals["bytes_read"] == 4 * backend.geometry.page_bytes and totals["read_gbps"] > 0
    assert totals["io_path"] == "direct" and totals["pages_corrupt"] == 0
    assert backend.get_stats().prefetch_pgs == []  # drained, as SGLang's collector expects
    backend.clear()
    assert backend.batch_exists(keys) == 0


def test_per_pool_v2_calls_store_kv_and_refuse_side_pools(block_root):
    from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer

    pool = mha_pool()
    backend = create(storage_config(block_root), pool)
    indices = pool.alloc(2 * PAGE)
    pages = fill_random(pool, indices, seed=11)
    keys = page_keys_of(list(range(2 * PAGE)), PAGE)
    kv = PoolTransfer(name=PoolName.KV, host_indices=indices, keys=keys)
    mamba = PoolTransfer(name=PoolName.MAMBA, host_indices=indices, keys=keys)
    assert backend.batch_set_v2([kv, mamba]) == {PoolName.KV: [True, True],
                                                 PoolName.MAMBA: [False, False]}
    assert backend.batch_exists_v2(keys).kv_hit_pages == 2
    assert backend.batch_exists_v2(keys, [mamba]).kv_hit_pages == 0
    dst = pool.alloc(2 * PAGE)
    got = backend.batch_get_v2([PoolTransfer(name=PoolName.KV, host_indices=dst, keys=keys)])
    assert got == {PoolName.KV: [True, True]}
    assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst), pages))
