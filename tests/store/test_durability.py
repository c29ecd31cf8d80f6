"""What must survive: a writer killed mid-write, two writers of the same keys, a full disk."""
import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from dualkv.errors import StorageError
from dualkv.layout import KVLayout
from dualkv.store import BlockStore, StoreConfig

LAYOUT = KVLayout(num_layers=8, bytes_per_token_layer=4096, block_tokens=16)  # ~516 KiB


def open_store(root, **kw):
    return BlockStore(StoreConfig(root, LAYOUT, cuda="off", pool_slots=kw.pop("pool_slots", 8),
                                  **kw))


def key_of(i: int) -> np.ndarray:
    return np.frombuffer(i.to_bytes(4, "little") * 8, dtype=np.uint8).reshape(1, 32)


def content_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, LAYOUT.full_block_bytes, dtype=np.uint8)


def write_forever(root):
    store = open_store(root, fsync=True)
    slot = store.pool.alloc(1)
    for i in range(10**6):
        store.pool.view(slot[0])[:] = content_of(i % 64)
        store.wait(store.store(key_of(i), slot))


def write_keys(root, keys, barrier):
    store = open_store(root)
    slots = store.pool.alloc(4)
    barrier.wait()
    for start in range(0, len(keys), 4):
        batch = keys[start:start + 4]
        for slot, i in zip(slots, batch):
            store.pool.view(slot)[:] = content_of(i)
        store.wait(store.store(np.concatenate([key_of(i) for i in batch]), slots[:len(batch)]))


def temp_files(root):
    return [n for _, _, names in os.walk(root) for n in names if n.endswith(".tmp")]


def block_files(root):
    return [n for _, _, names in os.walk(root) for n in names if n.endswith(".blk")]


def test_fsync_is_one_flush_per_batch_before_it_completes(block_root):
    """fsync=True is a group commit: a batch that writes blocks is flushed once, not once per
    block, before wait() returns; a batch of blocks already on disk flushes nothing; without
    fsync nothing is flushed. Every block reads back."""
    store = open_store(os.path.join(block_root, "synced"), fsync=True)
    slots = store.pool.alloc(6)
    for slot, i in zip(slots, range(6)):
        store.pool.view(slot)[:] = content_of(i)
    keys = np.concatenate([key_of(i) for i in range(6)])
    assert store.wait(store.store(keys, slots)).all()
    assert store.stats()["flushes"] == 1 and store.stats()["blocks_stored"] == 6
    assert store.wait(store.store(keys[:3], slots[:3])).all()  # on disk already: skipped
    assert store.stats()["flushes"] == 1
    assert store.wait(store.store(key_of(100), slots[:1])).all()
    assert store.stats()["flushes"] == 2
    for slot in slots:
        store.pool.view(slot)[:] = 0
    assert store.wait(store.load(keys, slots)).all()
    head = LAYOUT.header_bytes  # the store writes each block's header into its slot
    for slot, i in zip(slots, range(6)):
        assert np.array_equal(store.pool.view(slot)[head:], content_of(i)[head:])
    unsynced = open_store(os.path.join(block_root, "unsynced"))
    slot = unsynced.pool.alloc(1)
    assert unsynced.wait(unsynced.store(keys[:1], slot)).all()
    assert unsynced.stats()["flushes"] == 0


def test_writer_killed_mid_write_publishes_no_partial_block(block_root):
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=write_forever, args=(block_root,))
    writer.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (len(block_files(block_root)) >= 3 and
                                               temp_files(block_root)):
        time.sleep(0.002)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    store = open_store(block_root)
    stats = store.stats()
    assert stats["dropped_on_open"] == 0  # nothing half-written carries a block name
    n = stats["num_blocks"]
    assert n > 0
    keys = np.concatenate([key_of(i) for i in range(n)])
    assert store.contains(keys).all()
    slots = store.pool.alloc(1)
    for i in range(n):  # every visible block loads, verified, with its own bytes
        assert store.wait(store.load(keys[i:i + 1], slots))[0]
        assert np.array_equal(store.pool.view(slots[0])[LAYOUT.header_bytes:],
                              content_of(i % 64)[LAYOUT.header_bytes:])
    left = len(temp_files(block_root))
    removed = store.io.scan(remove_bad=True, remove_temp_after_s=0.0)["num_temp_removed"]
    assert removed == left and not temp_files(block_root)  # gc clears what the writer left


def test_two_processes_write_the_same_keys(block_root):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    keys = list(range(24))
    writers = [ctx.Process(target=write_keys, args=(block_root, keys, barrier)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    store = open_store(block_root)
    assert store.stats()["dropped_on_open"] == 0
    assert not temp_files(block_root)
    slots = store.pool.alloc(1)
    for i in keys:
        assert store.wait(store.load(key_of(i), slots))[0]
        assert np.array_equal(store.pool.view(slots[0])[LAYOUT.header_bytes:],
                              content_of(i)[LAYOUT.header_bytes:])


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs: room for three blocks and a bit."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    yield str(mount_point)
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_filesystem_is_a_clear_error_and_store_stays_readable(small_fs):
    store = open_store(small_fs)
    slots = store.pool.alloc(1)
    stored = []
    with pytest.raises(StorageError) as info:
        for i in range(16):
            store.pool.view(slots[0])[:] = content_of(i)
            store.wait(store.store(key_of(i), slots))
            stored.append(i)
    assert info.value.errno == errno.ENOSPC
    assert "No space left" in str(info.value)
    assert 1 <= len(stored) < 16
    assert not temp_files(small_fs)  # the failed block left nothing behind
    failed = len(stored)
    assert not store.contains(key_of(failed))[0]
    for i in stored:
        assert store.wait(store.load(key_of(i), slots))[0]
    ok = store.wait(store.store(key_of(failed), slots), check=False)
    assert not ok[0]
