"""A node's shared token-bucket file is input from other processes: bad rates are refused, a
huge debit cannot stall the node, and a damaged or truncated file is repaired instead of
blocking or killing its users (issue 16, item 4)."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dualkv
from dualkv import errors
from dualkv.transfer.traffic import open_bucket

MIB = 1 << 20
TAT_WORD = 3  # SharedBucketState: magic, rate_milli_bps, burst_bytes, tat_ns (int64 each)


@pytest.fixture
def node(tmp_path):
    return dict(node=f"f{os.getpid()}", shm_dir=str(tmp_path))


def bucket_path(node, nic):
    return os.path.join(node["shm_dir"], f"dualkv-{node['node']}-{nic}.bucket")


@pytest.mark.parametrize("gbps", [math.nan, math.inf, -1.0, 1e7])
def test_non_finite_negative_and_absurd_rates_are_refused(node, gbps):
    with pytest.raises(errors.InvalidArgument, match="rate"):
        open_bucket(node["node"], "snic", gbps, shm_dir=node["shm_dir"])


@pytest.mark.parametrize("backlog", [0.0, -1.0, math.nan, math.inf])
def test_bad_max_backlog_is_refused(node, backlog):
    with pytest.raises(errors.InvalidArgument, match="backlog"):
        open_bucket(node["node"], "snic", 1.0, shm_dir=node["shm_dir"], max_backlog_s=backlog)


def test_one_huge_debit_is_refused_and_never_stalls_the_node(node):
    # 1 GB/s with a 2 s bound: a 1 TB debit would queue 1000 s for every process.
    bucket = open_bucket(node["node"], "cnic", 1.0, burst_bytes=MIB, shm_dir=node["shm_dir"],
                         max_backlog_s=2.0)
    with pytest.raises(errors.InvalidArgument, match="max backlog"):
        bucket.debit(10**12)
    with pytest.raises(errors.InvalidArgument, match="max backlog"):
        bucket.acquire(10**12, 0)
    newcomer = open_bucket(node["node"], "cnic", 1.0, burst_bytes=MIB, shm_dir=node["shm_dir"],
                           max_backlog_s=2.0)
    newcomer.acquire(MIB, 1.0)  # TimedOut if the 1000 s debit had been queued


def test_a_damaged_queue_in_the_file_is_reset_not_waited_for(node):
    bucket = open_bucket(node["node"], "snic", 1.0, burst_bytes=MIB, shm_dir=node["shm_dir"],
                         max_backlog_s=2.0)
    state = np.memmap(bucket_path(node, "snic"), dtype=np.int64, mode="r+", shape=(4,))
    state[TAT_WORD] = np.iinfo(np.int64).max - 1  # another process wrote garbage
    state.flush()
    bucket.acquire(MIB, 1.0)  # a TimedOut (or an overflow) if the queue were trusted
    assert bucket.backlog_s <= 2.0
    assert bucket.num_repairs >= 1
    state[1] = -5  # a negative rate in the file: reset to this process's own
    state.flush()
    assert bucket.bytes_per_s == pytest.approx(1e9)


SURVIVOR = textwrap.dedent("""
    import os, sys
    from dualkv.transfer.traffic import open_bucket
    node, shm_dir = sys.argv[1], sys.argv[2]
    bucket = open_bucket(node, "snic", 1.0, burst_bytes=1 << 20, shm_dir=shm_dir)
    bucket.acquire(4096, 1.0)
    os.truncate(bucket.path, 0)  # any process of the node could do this
    bucket.acquire(4096, 1.0)  # touches the mapping beyond the file's end
    bucket.debit(4096)
    print(bucket.bytes_per_s, bucket.num_repairs, os.path.getsize(bucket.path), flush=True)
""")


def test_a_truncated_file_does_not_kill_its_users(node):
    src = os.path.dirname(os.path.dirname(dualkv.__file__))
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SURVIVOR, node["node"], node["shm_dir"]],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7 is SIGBUS
    rate, repairs, size = proc.stdout.split()
    assert float(rate) == pytest.approx(1e9)  # the state was re-initialised from its figures
    assert int(repairs) >= 1 and int(size) >= 4096
