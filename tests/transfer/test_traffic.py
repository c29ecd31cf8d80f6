"""Traffic manager: chunked kv copies and puts land byte-exact with their notice last, model
work is not queued behind kv work, and shared token buckets hold a node's NIC caps."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dualkv
from dualkv import errors
from dualkv._native import C
from dualkv.transfer.traffic import TrafficConfig, TrafficManager, measure_rate, open_bucket

KIB, MIB = 1024, 1024 * 1024
needs_ucx = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")


@pytest.fixture
def node(tmp_path):
    """A unique emulated node whose buckets live in a temp dir (cleaned up with it)."""
    return dict(node=f"t{os.getpid()}", shm_dir=str(tmp_path))


def test_kv_copy_is_chunked_and_byte_exact(node):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, 3 * MIB + 123, dtype=np.uint8)
    dst = np.zeros_like(src)
    with TrafficManager(TrafficConfig(chunk_bytes=256 * KIB, **node)) as tm:
        h = tm.copy(dst, src)
        tm.wait(h, 10)
        tm.release(h)
        np.testing.assert_array_equal(dst, src)
        assert tm.stats()["kv_chunks"] == 13  # ceil((3 MiB + 123) / 256 KiB)
        small = np.zeros(4096, np.uint8)
        tm.wait(tm.copy(small, src[:4096], cls="model"), 1)
        np.testing.assert_array_equal(small, src[:4096])


def test_bad_copies_and_classes_rejected(node):
    with TrafficManager(TrafficConfig(**node)) as tm:
        with pytest.raises(errors.InvalidArgument, match="null address"):
            tm.copy_ptrs([0], [1], [10])
        with pytest.raises(errors.InvalidArgument):
            tm.copy(np.zeros(10, np.uint8), np.zeros(11, np.uint8))
        with pytest.raises(errors.InvalidArgument, match="traffic class"):
            tm.copy(np.zeros(10, np.uint8), np.zeros(10, np.uint8), cls="bulk")
        tm.snic.acquire(1 << 40, 0)  # an uncapped NIC (0 GB/s) never makes anyone wait
        with pytest.raises(errors.InvalidArgument):
            tm.snic.acquire(-1, 0)
    with pytest.raises(errors.InvalidArgument):
        TrafficConfig(chunk_bytes=10)


def test_token_bucket_rate_within_ten_percent(node):
    # A 4 MiB burst absorbs the consumer being descheduled for up to 21 ms (a 512 KiB one,
    # 2.6 ms, failed 2 runs in 20 at load average 8.6: time the consumer is off the CPU past
    # the burst is capacity lost, as a token bucket should). Over 160 MiB the burst can add at
    # most 2.6% to the measured rate.
    bucket = open_bucket(node["node"], "snic", 0.2, burst_bytes=4 * MIB, shm_dir=node["shm_dir"])
    rate = measure_rate(bucket, 160 * MIB, 256 * KIB)  # 0.8 s at 0.2 GB/s
    assert abs(rate / 0.2e9 - 1) < 0.10, rate


def test_token_bucket_deadline_takes_nothing(node):
    bucket = open_bucket(node["node"], "cnic", 0.01, burst_bytes=0, shm_dir=node["shm_dir"])
    bucket.acquire(1 * MIB, 1.0)  # now ~100 ms of backlog
    start = time.perf_counter()
    with pytest.raises(errors.TimedOut):
        bucket.acquire(10 * MIB, 0.05)  # would need ~1 s: refused at once
    assert time.perf_counter() - start < 0.05
    bucket.acquire(64 * KIB, 1.0)  # the refused bytes were not charged
    assert time.perf_counter() - start < 0.3


def test_reserve_until_queues_reads_and_reports_the_backlog(node):
    """An emulated storage read: bytes queue behind earlier ones and arrive when the NIC would
    have delivered them; nothing sleeps; the backlog is what is still queued."""
    bucket = open_bucket(node["node"], "snic", 0.001, burst_bytes=0, shm_dir=node["shm_dir"])
    start = time.monotonic()
    first, second = bucket.reserve_until(500_000), bucket.reserve_until(250_000)
    assert time.monotonic() - start < 0.1  # no wait
    assert 0.5 <= first - start < 0.6 and 0.75 <= second - start < 0.85  # 1 MB/s, in order
    assert 0.65 < bucket.backlog_s <= 0.75 + (time.monotonic() - start)
    with pytest.raises(errors.InvalidArgument):
        bucket.reserve_until(-1)
    free = open_bucket(node["node"], "cnic", 0.0, shm_dir=node["shm_dir"])  # uncapped
    assert free.reserve_until(1 << 30) - time.monotonic() < 0.1 and free.backlog_s == 0


BUCKET_WORKER = """
import sys, time
from dualkv.transfer.traffic import open_bucket
b = open_bucket(sys.argv[1], "snic", 0.1, burst_bytes=65536, shm_dir=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
for _ in range(64):
    b.acquire(131072, 5.0)
print(start, time.monotonic(), flush=True)
"""


def test_token_bucket_is_shared_by_the_processes_of_a_node(node):
    src = os.path.dirname(os.path.dirname(dualkv.__file__))
    env = dict(os.environ, PYTHONPATH=src)
    procs = [subprocess.Popen([sys.executable, "-c", BUCKET_WORKER, node["node"], node["shm_dir"]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # both start together: 2 x 8 MiB through one 0.1 GB/s NIC
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = [tuple(map(float, p.communicate(timeout=30)[0].split())) for p in procs]
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    rate = 2 * 64 * 131072 / elapsed
    assert abs(rate / 0.1e9 - 1) < 0.10, (rate, spans)  # not 2 x 0.1 GB/s: one shared cap


def test_capped_kv_copy_takes_its_time(node):
    src = np.ones(16 * MIB, np.uint8)
    dst = np.zeros_like(src)
    cfg = TrafficConfig(cnic_gbps=0.1, chunk_bytes=256 * KIB, burst_bytes=256 * KIB, **node)
    with TrafficManager(cfg) as tm:
        start = time.perf_counter()
        tm.wait(tm.copy(dst, src), 10)
        rate = src.nbytes / (time.perf_counter() - start)
    assert abs(rate / 0.1e9 - 1) < 0.10, rate


@pytest.fixture
def agents():
    from dualkv.transfer import Agent, TransferConfig

    made = {cls: (Agent(TransferConfig(traffic_class=cls)), Agent(TransferConfig(traffic_class=cls)))
            for cls in ("kv", "model")}
    yield made
    for a, b in made.values():
        a.close()
        b.close()


def _link(a, b, src, dst):
    ra, rb = a.register(src), b.register(dst)
    peer = a.connect(b.local_info())
    b.connect(a.local_info())
    return peer, ra, rb


@needs_ucx
def test_kv_put_is_chunked_byte_exact_and_notice_comes_last(agents, node):
    a, b = agents["kv"]
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, 8 * MIB, dtype=np.uint8)
    dst = np.zeros_like(src)
    peer, ra, rb = _link(a, b, src, dst)
    blocks = rng.permutation(32)[:12]
    with TrafficManager(TrafficConfig(chunk_bytes=256 * KIB, **node), kv_agent=a) as tm:
        h = tm.put(peer, ra, rb.id, blocks * 256 * KIB, np.arange(12) * 256 * KIB,
                   np.full(12, 256 * KIB), request_id=9, layer=0, block_bytes=256 * KIB)
        b.wait_notice(9, 0, timeout=10)
        expect = src.reshape(32, -1)[blocks].reshape(-1)
        np.testing.assert_array_equal(dst[:12 * 256 * KIB], expect)  # all bytes before notice
        tm.wait(h, 10)
        with pytest.raises(errors.InvalidArgument, match="not a multiple"):
            tm.put(peer, ra, rb.id, [0], [0], [1000], block_bytes=256 * KIB)
        with pytest.raises(errors.InvalidArgument, match="no model agent"):
            tm.put(peer, ra, rb.id, [0], [0], [4096], cls="model")


@needs_ucx
def test_model_messages_do_not_queue_behind_a_kv_stream(agents, node):
    (ka, kb), (ma, mb) = agents["kv"], agents["model"]
    big, big_dst = np.ones(64 * MIB, np.uint8), np.zeros(64 * MIB, np.uint8)
    small, small_dst = np.ones(4096, np.uint8), np.zeros(4096, np.uint8)
    kpeer, kra, krb = _link(ka, kb, big, big_dst)
    mpeer, mra, mrb = _link(ma, mb, small, small_dst)
    # a 0.1 GB/s CNIC makes the 64 MiB kv stream last ~670 ms, 2.6 ms per 256 KiB chunk
    cfg = TrafficConfig(cnic_gbps=0.1, chunk_bytes=256 * KIB, burst_bytes=0, **node)
    with TrafficManager(cfg, kv_agent=ka, model_agent=ma) as tm:
        kv = tm.put(kpeer, kra, krb.id, [0], [0], [64 * MIB], request_id=1, layer=0)
        time.sleep(0.02)
        latencies = []
        for i in range(20):
            start = time.perf_counter()
            tm.wait(tm.put(mpeer, mra, mrb.id, [0], [0], [4096], request_id=2, layer=i,
                           cls="model"), 5)
            latencies.append(time.perf_counter() - start)
        assert not tm.poll(kv), ("kv stream should still be running", latencies)
        tm.wait(kv, 10)
    assert np.median(latencies) < 0.02, latencies  # far below the ~600 ms kv backlog
    assert big_dst.all()


@needs_ucx
def test_kv_is_not_starved_by_saturating_model_traffic(agents, node):
    (ka, kb), (ma, mb) = agents["kv"], agents["model"]
    (kra, kv_src), (krb, kv_dst) = ka.alloc(4 * MIB), kb.alloc(4 * MIB)
    kv_src[:], kv_dst[:] = 1, 0
    kpeer = ka.connect(kb.local_info())  # UCX-allocated: a kv chunk completes as it is posted
    # registered (not UCX-allocated) memory: a model put stays in flight until the peer's
    # progress thread applied it, so three of them keep model work in flight at all times
    mpeer, mra, mrb = _link(ma, mb, np.ones(MIB, np.uint8), np.zeros(MIB, np.uint8))
    cfg = TrafficConfig(chunk_bytes=256 * KIB, kv_min_share=0.2, **node)
    model_done = []
    with TrafficManager(cfg, kv_agent=ka, model_agent=ma) as tm:
        stop = threading.Event()

        def saturate():
            pending = [tm.put(mpeer, mra, mrb.id, [0], [0], [MIB], cls="model") for _ in range(3)]
            while pending:
                h = pending.pop(0)
                tm.wait(h, 10)
                tm.release(h)
                model_done.append(time.perf_counter())
                if not stop.is_set():
                    pending.append(tm.put(mpeer, mra, mrb.id, [0], [0], [MIB], cls="model"))

        thread = threading.Thread(target=saturate)
        thread.start()
        try:
            time.sleep(0.05)
            start = time.perf_counter()
            kv = tm.put(kpeer, kra, krb.id, [0], [0], [4 * MIB])
            tm.wait(kv, 20)  # without a kv share: starved until the model stream stops
            end = time.perf_counter()
        finally:
            stop.set()
            thread.join()
        stats = tm.stats()
    # Measured here: with the floor 5-53 ms and a kv share of 0.18-0.27 in 7 of 8 runs; with
    # kv_min_share=0 the put took 0.24-4 s while 0.7-12 GiB of model moved (share < 0.7%), its
    # chunks slipping through gaps between model puts. How many chunks go beside model work
    # depends on how often this loaded host leaves such gaps, so only "some" is asserted.
    num_model = sum(start <= t <= end for t in model_done)
    assert kv_dst.all()
    assert stats["kv_chunks_beside_model"] > 0, stats  # never without the floor
    assert end - start < 1.0, (end - start, num_model, stats)


@pytest.mark.gpu
def test_host_device_copies_on_cuda(node):
    import torch

    host = torch.randint(0, 255, (8 * MIB,), dtype=torch.uint8).pin_memory()
    dev = torch.empty(8 * MIB, dtype=torch.uint8, device="cuda")
    back = torch.zeros(8 * MIB, dtype=torch.uint8).pin_memory()
    with TrafficManager(TrafficConfig(**node)) as tm:
        tm.wait(tm.copy(dev, host), 10)
        tm.wait(tm.copy(back, dev, cls="model"), 10)
    assert torch.equal(back, host)


def test_copy_ranges_copies_each_range_and_refuses_bad_ones():
    from dualkv.transfer.traffic import copy_ranges

    src = np.arange(4096, dtype=np.uint8)
    dst = np.zeros(4096, dtype=np.uint8)
    s, d = src.ctypes.data, dst.ctypes.data
    copy_ranges([d + 100, d + 2000], [s, s + 3000], [50, 7])  # lengths per range
    assert (dst[100:150] == src[:50]).all() and (dst[2000:2007] == src[3000:3007]).all()
    assert dst[:100].sum() == 0 and dst[150:2000].sum() == 0 and dst[2007:].sum() == 0
    copy_ranges(np.array([d, d + 64]), np.array([s + 64, s]), np.array([64, 64]))
    assert (dst[:64] == src[64:128]).all() and (dst[64:128] == src[:64]).all()
    before = dst.copy()
    for bad in [([d], [s, s], [1, 1]), ([d], [s], [-1]), ([0], [s], [1]), ([d], [0], [1]),
                ([d], [s], [0.5]), ([d, d], [s, s], [8, 0])]:
        with pytest.raises(errors.InvalidArgument):
            copy_ranges(*bad)
    assert (dst == before).all()  # a bad descriptor anywhere: nothing was copied



def test_storage_writes_have_their_own_direction(node):
    """A NIC is full duplex: writes charged to snic_tx, at the storage NIC's rate, leave the
    read bucket's queue as it was."""
    with TrafficManager(TrafficConfig(snic_gbps=0.001, **node)) as tm:
        assert tm.snic_tx.bytes_per_s == tm.snic.bytes_per_s == 1e6
        tm.snic_tx.debit(10_000_000)  # 10 s of writes
        assert tm.snic.backlog_s < 0.1 and tm.snic_tx.backlog_s > 9
