import numpy as np
import pytest

from dualkv.errors import InvalidArgument, OutOfMemory
from dualkv.layout import KVLayout
from dualkv.store.pool import HostPool

LAYOUT = KVLayout(num_layers=3, bytes_per_token_layer=96, block_tokens=16)


@pytest.fixture
def pool():
    return HostPool(LAYOUT, num_slots=8, cuda="off")


def test_slots_are_page_aligned_and_sized(pool):
    assert pool.slot_bytes == LAYOUT.full_block_bytes
    assert pool.base_ptr % 4096 == 0
    assert pool.size_bytes >= 8 * LAYOUT.full_block_bytes
    for slot in range(8):
        assert pool.ptr(slot) == pool.base_ptr + slot * pool.slot_bytes
    assert pool.page_kind in ("hugetlb-2MiB", "4KiB+THP", "4KiB")


def test_alloc_is_all_or_nothing_and_free_returns(pool):
    ids = pool.alloc(5)
    assert ids.dtype == np.int64 and len(set(ids.tolist())) == 5
    with pytest.raises(OutOfMemory):
        pool.alloc(4)
    assert pool.num_free == 3
    pool.free(ids)
    assert pool.num_free == 8
    assert sorted(pool.alloc(8).tolist()) == list(range(8))


def test_bad_free_changes_nothing(pool):
    ids = pool.alloc(2)
    with pytest.raises(InvalidArgument):
        pool.free([ids[0], ids[0]])  # repeated in one batch
    with pytest.raises(InvalidArgument):
        pool.free([ids[1], 7 if 7 not in ids else 6])  # second one is not allocated
    assert pool.num_free == 6
    pool.free(ids)
    with pytest.raises(InvalidArgument):
        pool.free(ids)  # freed twice
    with pytest.raises(InvalidArgument):
        pool.free([99])


def test_views_are_zero_copy(pool):
    slot = 5
    pool.layer_view(slot, 2)[:] = 7
    start = LAYOUT.layer_offset(2)
    assert (pool.view(slot)[start:start + LAYOUT.layer_block_bytes] == 7).all()
    assert (pool.array()[slot, start:start + LAYOUT.layer_block_bytes] == 7).all()
    assert pool.view(slot).ctypes.data == pool.ptr(slot)
    assert pool.layer_view(slot, 2).ctypes.data == pool.layer_ptr(slot, 2)


def test_torch_tensor_shares_memory(pool):
    torch = pytest.importorskip("torch")
    t = pool.tensor(3)
    t[:16] = 42
    assert (pool.view(3)[:16] == 42).all()
    assert t.dtype == torch.uint8 and t.data_ptr() == pool.ptr(3)


def test_views_keep_pool_alive():
    view = HostPool(LAYOUT, num_slots=2, cuda="off").view(1)
    view[:] = 3  # the pool object is gone; its memory must not be
    assert int(view.sum()) == 3 * view.size


@pytest.mark.parametrize("slot", [-1, 8, 1.5, True])
def test_bad_slot_is_invalid_argument(pool, slot):
    with pytest.raises(InvalidArgument):
        pool.view(slot)
    with pytest.raises(InvalidArgument):
        pool.ptr(slot)


def test_bad_layer_is_invalid_argument(pool):
    with pytest.raises(InvalidArgument):
        pool.layer_view(0, 3)


def test_bad_sizes_are_invalid():
    with pytest.raises(InvalidArgument):
        HostPool(LAYOUT, num_slots=0)
    with pytest.raises(InvalidArgument):
        HostPool(LAYOUT, num_slots=2, cuda="maybe")


@pytest.mark.gpu
def test_cuda_registration_when_a_gpu_is_present():
    pool = HostPool(LAYOUT, num_slots=4, cuda="required")
    assert pool.is_cuda_registered


def test_small_memlock_limit_says_how_to_raise_it(tmp_path):
    """io_uring pins the pool; without CAP_IPC_LOCK the pin counts against RLIMIT_MEMLOCK."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("prlimit")):
        pytest.skip("dropping CAP_IPC_LOCK needs root, setpriv and prlimit")
    code = ("from dualkv.layout import KVLayout\n"
            "from dualkv.store import BlockStore, StoreConfig\n"
            "from dualkv.errors import OutOfMemory\n"
            "try:\n"
            f"    BlockStore(StoreConfig({str(tmp_path)!r}, KVLayout(8, 16384, 64),\n"
            "               pool_slots=16, io_backend='io_uring', cuda='off'))\n"
            "except OutOfMemory as exc:\n"
            "    print('OutOfMemory:', exc)\n")
    done = subprocess.run(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--",
                           "prlimit", "--memlock=65536", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    if "io_uring_queue_init failed" in done.stderr:
        pytest.skip("io_uring is refused here")
    assert "OutOfMemory:" in done.stdout, done.stderr
    assert "RLIMIT_MEMLOCK" in done.stdout and "ulimit -l" in done.stdout
    assert "CAP_IPC_LOCK" in done.stdout



@pytest.mark.parametrize("bad", [[1.7], [True], ["1"], 2.0])
def test_slot_ids_must_be_integers(pool, bad):
    """A float is not rounded to a slot (free([1.7]) freed slot 1), a bool is not a slot."""
    pool.alloc(8)
    with pytest.raises(InvalidArgument):
        pool.free(bad)
    assert pool.num_free == 0
    with pytest.raises(InvalidArgument):
        HostPool(LAYOUT, num_slots=4, cuda="off").alloc(1.5)
