"""`dualkv bench storage`: cold reads of Full Blocks from the block store, side by side with
fio (ioengine=io_uring, direct=1) on the same files, block size, queue depth and page kind.

Each configuration writes a set of block files once, then runs --repeat rounds (at least 3
with fio). In a round, each pool page kind (the store's default huge pages, and plain 4 KiB
pages) gets a dualkv run and a fio run whose buffers sit on the same kind of pages
(`bench/fio.py`), in an order that alternates from round to round, the page cache dropped
before each where permitted. A row reports the medians and every round's paired ratio; this
virtual disk's speed drifts by up to 3x within a minute, so `ratio_of_rounds`, the median of
the per-round ratios, is the figure to read.

Queue depth means the same on both sides: the reads in flight (fio's iodepth, the store's
`queue_depth`). By default the store gets every block in one `load` call, as a prefill asks
for its whole hit prefix; `--batch N` instead paces N blocks per call from Python, two calls
in flight, to show what a caller's loop adds.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from dualkv.bench import fio
from dualkv.bench.fio import FioBuffers
from dualkv.bench.report import Report, with_rounds
from dualkv.errors import InvalidArgument

DEFAULT_SIZES_KIB = [256, 1024, 8192]
DEFAULT_DEPTHS = [1, 8, 32]
FULL_SIZES_KIB = [256, 512, 1024, 2048, 4096, 8192]
FULL_DEPTHS = [1, 2, 4, 8, 16, 32, 64]
NUM_LAYERS = 8


def parse_args(argv):
    p = argparse.ArgumentParser(prog="dualkv bench storage", description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=None, help="where to write the block files (a real disk; "
                   "default: a temporary folder under the current directory)")
    p.add_argument("--sizes-kib", type=int, nargs="+", default=None)
    p.add_argument("--depths", type=int, nargs="+", default=None)
    p.add_argument("--full", action="store_true", help="sizes 256 KiB..8 MiB x depths 1..64")
    p.add_argument("--total-mib", type=int, default=192, help="MiB read per run")
    p.add_argument("--repeat", type=int, default=5, help="rounds (each a dualkv and a fio run "
                   "per page kind, paired); at least 3 with fio; medians are kept")
    p.add_argument("--batch", type=int, default=0,
                   help="blocks per load call, two calls in flight (default 0: all in one call)")
    p.add_argument("--backend", default="auto", choices=["auto", "io_uring", "posix"])
    p.add_argument("--pages", default="both", choices=["huge", "4k", "both"],
                   help="pool pages for dualkv, and fio's buffers on the same kind: huge "
                        "(2 MiB when possible, the store's default) or 4k, or a row for each")
    p.add_argument("--no-fio", action="store_true")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def layout_for(block_kib):
    """8 Layer Blocks of block_kib / 8 each (64 tokens), plus the 4 KiB header page."""
    from dualkv.layout import KVLayout

    return KVLayout(NUM_LAYERS, block_kib * 1024 // NUM_LAYERS // 64, 64)


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def write_blocks(root, layout, num_blocks, backend):
    from dualkv.store import BlockStore, StoreConfig

    store = BlockStore(StoreConfig(root, layout, pool_slots=16, io_backend=backend, cuda="off"))
    keys = np.random.default_rng(0).integers(0, 256, (num_blocks, 32), dtype=np.uint8)
    slots = store.pool.alloc(16)
    store.pool.array()[:] = np.random.default_rng(1).integers(0, 256, store.pool.array().shape,
                                                              dtype=np.uint8)
    for start in range(0, num_blocks, 16):
        chunk = keys[start:start + 16]
        store.wait(store.store(chunk, slots[:len(chunk)]), timeout=600)
    paths = [store.io.path_of(k.tobytes()) for k in keys]
    store.close()
    return keys, paths


def read_dualkv(root, layout, keys, depth, backend, huge_pages=True, batch=0):
    """Seconds to load every key with `depth` reads in flight: in one load call (batch 0), or
    `batch` blocks per call with two calls in flight."""
    from dualkv.store import BlockStore, StoreConfig

    batch = batch or len(keys)
    num_slots = len(keys) if batch >= len(keys) else 2 * batch
    store = BlockStore(StoreConfig(root, layout, pool_slots=num_slots, queue_depth=depth,
                                   io_backend=backend, cuda="off", huge_pages=huge_pages))
    slots = store.pool.alloc(num_slots)
    in_flight = []
    failures = 0
    start = time.perf_counter()
    for i, first in enumerate(range(0, len(keys), batch)):
        if len(in_flight) == 2:
            failures += int((~store.wait(in_flight.pop(0), timeout=600)).sum())
        chunk = keys[first:first + batch]
        base = 0 if num_slots == len(keys) else (i % 2) * batch
        in_flight.append(store.load(chunk, slots[base:base + len(chunk)]))
    for handle in in_flight:
        failures += int((~store.wait(handle, timeout=600)).sum())
    seconds = time.perf_counter() - start
    backend_used, pages = store.backend, store.pool.page_kind
    store.close()
    if failures:
        raise RuntimeError(f"{failures} blocks failed to load in the bench")
    return seconds, backend_used, pages


def run_config(report, args, root, depth, keys_paths, layout, has_fio):
    """`repeat` rounds; in each, every page kind's dualkv run is paired with a fio run on the
    same page kind, and the pair's order alternates (dualkv first in even rounds for the first
    kind, odd ones for the second), so neither side always reads the disk right after the
    other. One row per page kind: medians and the per-round paired ratios."""
    keys, fio_folder = keys_paths
    total = layout.full_block_bytes * len(keys)
    kinds = {"huge": [True], "4k": [False], "both": [True, False]}[args.pages]
    # an untimed warm-up per kind, which also tells the pool's page kind fio must match
    pages = {huge: read_dualkv(root, layout, keys, depth, args.backend, huge, args.batch)[2]
             for huge in kinds}
    buffers = {huge: FioBuffers(pages[huge], depth * layout.full_block_bytes) if has_fio
               else None for huge in kinds}
    ours, refs = {huge: [] for huge in kinds}, {huge: [] for huge in kinds}
    first = {huge: [] for huge in kinds}  # which side read first, per round
    backend, dropped = args.backend, True
    try:
        for rnd in range(args.repeat):
            for i, huge in enumerate(kinds):
                mem_args = buffers[huge] and buffers[huge].args
                sides = ["dualkv", "fio"] if (rnd + i) % 2 == 0 else ["fio", "dualkv"]
                first[huge].append(sides[0] if mem_args is not None else "dualkv")
                for side in sides:
                    dropped &= drop_caches()
                    if side == "dualkv":
                        seconds, backend, _ = read_dualkv(root, layout, keys, depth,
                                                          args.backend, huge, args.batch)
                        ours[huge].append(total / seconds / 1e9)
                    elif mem_args is not None:
                        refs[huge].append(fio.read_bytes_per_s(
                            fio_folder, len(keys), layout.full_block_bytes, depth,
                            mem_args) / 1e9)
    finally:
        for b in buffers.values():
            if b is not None:
                b.close()
    for huge in kinds:
        row = {"block_bytes": layout.full_block_bytes, "queue_depth": depth,
               "backend": backend, "pages": pages[huge], "num_blocks": len(keys),
               "batch": args.batch or len(keys), "caches_dropped": dropped}
        if refs[huge]:
            row["ref_pages"] = buffers[huge].ref_pages
            row = with_rounds(row, "read_gbps", "fio", ours[huge], refs[huge])
        else:
            row["read_gbps"] = statistics.median(ours[huge])
            if has_fio:  # fio ran, but not on this page kind: no cross-kind ratio
                row = dict(row, reference="fio", ref_read_gbps=None, ratio=None,
                           ref_unavailable=buffers[huge].error)
        row["first_of_rounds"] = first[huge]
        row["us_per_block"] = 1e6 * layout.full_block_bytes / (row["read_gbps"] * 1e9)
        report.add(row)


def main(argv=None):
    args = parse_args(argv)
    sizes = FULL_SIZES_KIB if args.full else (args.sizes_kib or DEFAULT_SIZES_KIB)
    depths = FULL_DEPTHS if args.full else (args.depths or DEFAULT_DEPTHS)
    has_fio = not args.no_fio and shutil.which("fio") is not None
    if has_fio and args.repeat < 3:
        raise InvalidArgument(f"--repeat {args.repeat}: a comparison with fio needs at least "
                              "3 rounds (or --no-fio)")
    report = Report("bench storage", args.json)
    if not has_fio and not args.no_fio and not args.json:
        print("fio not found: dualkv figures only (apt-get install fio)")
    if not drop_caches() and not args.json:
        print("cannot drop the page cache here (needs root): O_DIRECT reads bypass it anyway")
    workdir = tempfile.mkdtemp(prefix="dualkv-bench-", dir=args.dir or os.getcwd())
    try:
        for block_kib in sizes:
            layout = layout_for(block_kib)
            num_blocks = max(max(depths) * 2, args.total_mib * 1024 // block_kib)
            root = os.path.join(workdir, f"b{block_kib}")
            keys, paths = write_blocks(root, layout, num_blocks, args.backend)
            keys_paths = (keys, fio.link_files(paths, root) if has_fio else None)
            for depth in depths:
                run_config(report, args, root, depth, keys_paths, layout, has_fio)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.finish()
    return 0
