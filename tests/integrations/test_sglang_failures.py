"""What SGLang expects when storage fails: a full disk, a read-only root and random failures
never raise into the controller's threads, and never serve wrong bytes."""
import logging
import os
import subprocess
import tempfile

import pytest

pytest.importorskip("sglang")

import torch  # noqa: E402

from dualkv.integrations import sglang as backend_module  # noqa: E402
from dualkv.testing.sglang_cpu import make_host_pool  # noqa: E402
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


@pytest.fixture
def read_only_view(block_root):
    """(writer's root, the same directory bind-mounted read-only): what a reader server sees
    when it mounts the writer's disk read-only."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    view = tempfile.mkdtemp(prefix="dualkv-ro-")
    done = subprocess.run(f"mount --bind {block_root} {view} && "
                          f"mount -o remount,bind,ro {view}", shell=True,
                          capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", view], check=False, capture_output=True)
        os.rmdir(view)
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
    yield block_root, view
    subprocess.run(["umount", "-l", view], check=False)
    os.rmdir(view)


def small_pool(layout="layer_first"):
    return make_host_pool("mha", layout, num_layers=2, page_size=PAGE, num_pages=24,
                          num_kv_heads=2, head_dim=64)  # 8 KiB Layer Blocks: O_DIRECT


def warnings_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith("dualkv")]


def test_read_only_root_without_its_namespace_attaches_then_finds_it(read_only_view, caplog,
                                                                     monkeypatch):
    writer_root, reader_root = read_only_view
    monkeypatch.setattr(backend_module, "REOPEN_INTERVAL_S", 3600.0)
    caplog.set_level(logging.INFO, logger="dualkv")
    reader_pool, writer_pool = small_pool(), small_pool()
    tokens = list(range(1, 1 + 3 * PAGE))
    keys = page_keys_of(tokens, PAGE)
    with one_rank():
        reader = ControllerHarness(reader_pool, "mha", "dynamic", extra_config(reader_root))
        try:
            [attach] = warnings_of(caplog)  # exactly one line, and it says what and where
            assert reader_root in attach and "[Errno 30]" in attach and "re-checked" in attach
            namespace = os.listdir(writer_root)
            assert namespace == []  # nothing was created

            src = reader_pool.alloc(len(tokens))
            fill_random(reader_pool, src, seed=31)
            assert reader.backup(src, tokens) == 0  # a set is False, nothing raises
            assert reader.backend.batch_set_v1(keys, src) == [False] * 3
            assert reader.backend.batch_get_v1(keys, src) == [False] * 3
            assert reader.backend.batch_exists(keys) == 0 and not reader.backend.exists(keys[0])
            assert reader.prefetch(tokens) == (0, 0, None)
            reader_pool.free(src)

            writer = ControllerHarness(writer_pool, "mha", "dynamic", extra_config(writer_root))
            try:
                src = writer_pool.alloc(len(tokens))
                expected = fill_random(writer_pool, src, seed=32)
                assert writer.backup(src, tokens) == len(tokens)
            finally:
                writer.close()
            assert reader.backend.batch_exists(keys) == 0  # not re-checked before the interval
            reader.backend._next_open_s = 0.0  # as if REOPEN_INTERVAL_S had passed
            hit, done, dst = reader.prefetch(tokens)
            assert hit == done == len(tokens)
            assert all(torch.equal(a, b) for a, b in zip(read_pages(reader_pool, dst), expected))
            assert any("appeared" in r.getMessage() for r in caplog.records)
            assert len(warnings_of(caplog)) == 2 and "not writable" in warnings_of(caplog)[1]
        finally:
            reader.close()


def test_read_only_root_with_its_namespace_reads_and_sets_say_why(read_only_view, caplog):
    writer_root, reader_root = read_only_view
    writer_pool, reader_pool = small_pool("page_first_direct"), small_pool()
    first, more = list(range(1, 1 + 2 * PAGE)), list(range(900, 900 + 2 * PAGE))
    with one_rank():
        writer = ControllerHarness(writer_pool, "mha", "dynamic", extra_config(writer_root))
        try:
            src = writer_pool.alloc(len(first))
            expected = fill_random(writer_pool, src, seed=41)
            assert writer.backup(src, first) == len(first)
        finally:
            writer.close()
        caplog.set_level(logging.INFO, logger="dualkv")
        reader = ControllerHarness(reader_pool, "mha", "dynamic", extra_config(reader_root))
        try:
            hit, done, dst = reader.prefetch(first)
            assert hit == done == len(first)
            assert all(torch.equal(a, b) for a, b in zip(read_pages(reader_pool, dst), expected))
            src = reader_pool.alloc(len(more))
            fill_random(reader_pool, src, seed=42)
            assert reader.backup(src, more) == 0
            assert reader.backend.batch_exists(page_keys_of(more, PAGE)) == 0
            logged = "\n".join(warnings_of(caplog))
            assert "not writable" in logged
            assert "2 of 2 pages were not stored" in logged
            assert "[Errno 30]" in logged and "Read-only file system" in logged
        finally:
            reader.close()


def test_full_filesystem_is_false_and_the_store_stays_readable(small_tmpfs, caplog):
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
            failed = [m for m in warnings_of(caplog) if "were not stored" in m]
            assert len(failed) == 1  # once per errno, however many batches failed
            assert "[Errno 28]" in failed[0] and "No space left on device" in failed[0]
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
