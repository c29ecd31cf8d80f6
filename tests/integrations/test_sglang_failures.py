"""What SGLang expects when storage fails: a full disk and random failures never raise into
the controller's threads, and never serve wrong bytes."""
import os
import subprocess
import tempfile

import pytest

pytest.importorskip("sglang")

import torch  # noqa: E402

from dualkv.integrations.sglang_cpu import make_host_pool  # noqa: E402
from sglang_harness import (ControllerHarness, fill_random, one_rank, page_keys_of,  # noqa: E402
                            read_pages)

PAGE = 16


def extra_config(root):
    return {"backend_name": "dualkv", "module_path": "dualkv.integrations.sglang",
            "class_name": "DualKVHiCacheStorage", "interface_v1": 1, "root": root}


@pytest.fixture
def small_tmpfs():
    """A 256 KiB tmpfs: room for a few 36 KiB pages, then ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tempfile.mkdtemp(prefix="dualkv-full-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount_point],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(mount_point)
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", mount_point], check=False)
    os.rmdir(mount_point)


def test_full_filesystem_is_false_and_the_store_stays_readable(small_tmpfs):
    pool = make_host_pool("mha", "page_first", num_layers=2, page_size=PAGE, num_pages=24,
                          num_kv_heads=2, head_dim=64)  # 32 KiB of KV a page
    with one_rank():
        harness = ControllerHarness(pool, "mha", "dynamic", extra_config(small_tmpfs))
        try:
            first = list(range(1, 1 + 3 * PAGE))
            src = pool.alloc(len(first))
            expected = fill_random(pool, src, seed=21)
            assert harness.backup(src, first) == len(first)

            more = list(range(5000, 5000 + 12 * PAGE))  # far more than the tmpfs holds
            src_more = pool.alloc(len(more))
            fill_random(pool, src_more, seed=22)
            assert harness.backup(src_more, more) == 0  # the batch reported False, no raise
            direct = harness.backend.batch_set_v1(page_keys_of(more, PAGE), src_more)
            assert isinstance(direct, list) and not all(direct)
            assert harness.controller.backup_thread.is_alive()

            pool.free(src)
            pool.free(src_more)
            hit, done, dst = harness.prefetch(first)
            assert hit == done == len(first)
            assert all(torch.equal(a, b) for a, b in zip(read_pages(pool, dst), expected))
            assert harness.backend.get_stats().as_dict()["pages_write_failed"] > 0
        finally:
            harness.close()


def test_random_injected_failures_never_stop_the_controller(block_root, monkeypatch):
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE", "0.3")
    pool = make_host_pool("mha", "layer_first", num_layers=2, page_size=PAGE, num_pages=48,
                          num_kv_heads=2, head_dim=64)
    with one_rank():
        harness = ControllerHarness(pool, "mha", "dynamic", extra_config(block_root))
        try:
            outcomes = []
            for r in range(20):  # each round makes 3 backend calls, each failing with p = 0.3
                tokens = list(range(r * 10000, r * 10000 + 3 * PAGE))
                src = pool.alloc(len(tokens))
                expected = fill_random(pool, src, seed=100 + r)
                stored = harness.backup(src, tokens)
                assert stored in (0, len(tokens))
                pool.free(src)
                hit, done, dst = harness.prefetch(tokens, rid=f"r{r}")
                assert hit in ((0, len(tokens)) if stored else (0,)) and done <= hit
                outcomes.append(done == len(tokens))
                if dst is not None:
                    got = read_pages(pool, dst)[: done // PAGE]
                    assert all(torch.equal(a, b) for a, b in zip(got, expected))
                    pool.free(dst)
            assert any(outcomes) and not all(outcomes)  # P(flaky) < 1e-3
            threads = (harness.controller.backup_thread, harness.controller.prefetch_thread,
                       harness.controller.prefetch_io_aux_thread)
            assert all(t.is_alive() for t in threads)
        finally:
            harness.close()
