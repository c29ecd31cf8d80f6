"""close() on a stalled device (issue 16, item 6): with the store's filesystem frozen
(fsfreeze on a loop-mounted ext4 image) a store batch cannot finish; close(timeout) must
return by its deadline, let other Python threads run while it waits, and report what it
abandoned. The store runs in a child process so that a close() that blocks for the whole
stall (as it did) fails the test at the child's deadline instead of hanging the suite."""
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import dualkv

CLOSE_TIMEOUT_S = 1.0
CHILD_DEADLINE_S = 60.0  # the child imports, stores, closes: far past CLOSE_TIMEOUT_S


def _run(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def frozen_mount(tmp_path):
    """An ext4 image mounted on tmp_path/mnt, yielded together with its freeze switch."""
    tools = ("mkfs.ext4", "mount", "umount", "fsfreeze")
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in tools):
        pytest.skip("needs root, mkfs.ext4 and fsfreeze to freeze a loop-mounted filesystem")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    try:
        _run("mount", "-o", "loop", str(image), str(mnt))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot loop-mount here: {exc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True, timeout=30)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


CHILD = textwrap.dedent("""
    import json, subprocess, sys, threading, time
    import numpy as np
    from dualkv.layout import KVLayout
    from dualkv.store import BlockStore, StoreConfig
    mnt, timeout = sys.argv[1], float(sys.argv[2])
    store = BlockStore(StoreConfig(mnt + "/blocks", KVLayout(2, 64, 16), cuda="off",
                                   pool_slots=4, fsync=True))
    subprocess.run(["fsfreeze", "-f", mnt], check=True, timeout=30)
    keys = np.random.default_rng(0).integers(0, 256, (2, 32), dtype=np.uint8)
    slots = store.pool.alloc(2)
    handle = store.store(keys, slots)
    ticks = []
    stop = threading.Event()
    def tick():  # runs only while close() lets go of the GIL
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)
    threading.Thread(target=tick, daemon=True).start()
    start = time.monotonic()
    abandoned = store.close(timeout=timeout)
    end = time.monotonic()
    stop.set()
    during = sum(1 for t in ticks if start < t < end)
    print(json.dumps(dict(abandoned, seconds=end - start, ticks=during)), flush=True)
    import os
    os._exit(0)  # the abandoned writer is still stuck in the frozen filesystem
""")


def test_close_on_a_frozen_filesystem_honours_its_deadline(frozen_mount):
    src = os.path.dirname(os.path.dirname(dualkv.__file__))
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(frozen_mount),
                              str(CLOSE_TIMEOUT_S)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(child, CHILD_DEADLINE_S)  # the child cannot exit before the thaw
    finally:
        subprocess.run(["fsfreeze", "-u", str(frozen_mount)], capture_output=True, timeout=30)
        child.kill()
        child.wait(30)
    assert line is not None, "close() blocked for the whole stall of the frozen filesystem"
    report = json.loads(line)
    assert report["num_batches"] == 1 and report["num_blocks"] >= 1, report  # said so
    assert report["seconds"] < CHILD_DEADLINE_S / 2, report
    assert report["ticks"] >= 1, report  # another Python thread ran while close() waited


def _read_line(child, timeout_s):
    """The child's JSON report, or None at the deadline. (Its threads stuck in the frozen
    filesystem keep stdout open, so reading to the end would wait for the thaw.)"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], deadline - time.monotonic())
        if not ready:
            return None
        line = child.stdout.readline()
        if not line:
            return None
        if line.startswith("{"):
            return line
    return None
