"""`dualkv bench index`: the prefix index's insert rate, match latency from Python, memory per
block (by RSS) and eviction, at index sizes up to 10 M blocks.

Keys are random 32-byte strings (the same distribution as SHA-256 chain keys) forming chains
of --chain-blocks. Memory is the process RSS growth while the index is built, divided by the
blocks it holds (the key arrays are allocated before the first reading).

Where a chain's nodes lie in memory decides the match time, so matches are measured on three
layouts of the same chains (--layouts):
- whole: each chain inserted by one insert_chain call (a long prompt stored at once); its
  nodes are consecutive, and match follows them without the hash table;
- grown: every chain grows --grow-blocks blocks per call, round robin over all chains (agents'
  turns storing their new blocks), so a chain's nodes are scattered in runs of that length;
- rebuilt: insert_edges in random order (a store reopened: headers come in file order), so
  every node is somewhere else.
grown and rebuilt are measured again after compact(), which lays every chain out
consecutively (the store calls it after a rebuild); its time is printed too.
"""
import argparse
import gc
import os
import statistics
import time

import numpy as np

from dualkv.bench.report import Report
from dualkv.store.index import PrefixIndex


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build(keys: np.ndarray, chain_blocks: int, block_bytes: int):
    """A fresh index holding all keys as whole chains: (index, wall s, CPU s, RSS growth)."""
    gc.collect()
    rss_before = rss_bytes()
    index = PrefixIndex()
    start, cpu_start = time.perf_counter(), time.process_time()
    for first in range(0, len(keys), chain_blocks):
        index.insert_chain(keys[first:first + chain_blocks], block_bytes=block_bytes)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return index, seconds, cpu_s, rss_bytes() - rss_before


def build_grown(keys: np.ndarray, chain_blocks: int, block_bytes: int, grow_blocks: int):
    """All chains grown grow_blocks blocks per insert_chain call, round robin over chains."""
    index = PrefixIndex()
    chains = keys.reshape(-1, chain_blocks, keys.shape[1])
    for first in range(0, chain_blocks, grow_blocks):
        for chain in chains:
            parent = chain[first - 1].tobytes() if first else None
            index.insert_chain(chain[first:first + grow_blocks], parent_key=parent,
                               block_bytes=block_bytes)
    return index


def build_rebuilt(keys: np.ndarray, chain_blocks: int, block_bytes: int, rng):
    """Every block inserted as an edge, in random order, in one call, as a store's rebuild does."""
    index = PrefixIndex()
    order = rng.permutation(len(keys))
    has_parent = (order % chain_blocks != 0).astype(np.uint8)
    index.insert_edges(keys[order], keys[order - 1], has_parent, block_bytes=block_bytes)
    return index


def match_us(index, chains, repeat: int) -> tuple[float, float, float]:
    """(wall p50, wall min, CPU p50) µs of one match() over `chains`, taken round-robin (one
    chain: always cache-warm). CPU time leaves out time the thread was descheduled, which on
    a shared machine is most of the spread."""
    for chain in chains[:10]:
        index.match(chain)
    wall, cpu = [], []
    for i in range(repeat):
        chain = chains[i % len(chains)]
        w, c = time.perf_counter(), time.thread_time()
        index.match(chain)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall) * 1e6, min(wall) * 1e6, statistics.median(cpu) * 1e6


def bench_size(report, num_blocks: int, chain_blocks: int, block_bytes: int, repeat: int,
               layouts: list, grow_blocks: int):
    rng = np.random.default_rng(num_blocks)
    keys = rng.integers(0, 256, (num_blocks, 32), dtype=np.uint8)
    common = dict(num_blocks=num_blocks, chain_blocks=chain_blocks)
    # Built twice: in the first build the kernel's page clearing (huge-page faults) was most of
    # the profile here; the second, after the first index is freed, shows the index's own cost.
    for build_number in (1, 2):
        index = None
        gc.collect()
        index, seconds, cpu_s, rss_growth = build(keys, chain_blocks, block_bytes)
        report.add(dict(common, op="insert_chain", build=build_number,
                        inserts_per_s=num_blocks / seconds, ns_per_block=seconds * 1e9 / num_blocks,
                        cpu_inserts_per_s=num_blocks / cpu_s, load_avg=os.getloadavg()[0]))
        if build_number == 1:
            fresh_rss_growth = rss_growth
    stats = index.stats()
    rss_growth = fresh_rss_growth
    report.add(dict(common, op="memory", rss_bytes_per_block=rss_growth / num_blocks,
                    index_bytes_per_block=stats["memory_bytes"] / num_blocks))
    num_chains = num_blocks // chain_blocks
    chains = [keys[i * chain_blocks:(i + 1) * chain_blocks] for i in range(num_chains)]
    spread = rng.permutation(num_chains)[:repeat]
    built = "whole"
    for layout in layouts:
        if layout != built:
            index = None
            gc.collect()
        if layout == "whole" and built != "whole":
            index = build(keys, chain_blocks, block_bytes)[0]
        elif layout == "grown":
            index = build_grown(keys[:num_chains * chain_blocks], chain_blocks, block_bytes,
                                grow_blocks)
        elif layout == "rebuilt":
            index = build_rebuilt(keys[:num_chains * chain_blocks], chain_blocks, block_bytes, rng)
        built = layout
        compacted = [False] if layout == "whole" else [False, True]
        for is_compacted in compacted:
            if is_compacted:  # what the store does after a rebuild; a grown index may too
                start = time.perf_counter()
                index.compact()
                report.add(dict(common, op="compact", layout=layout,
                                seconds=time.perf_counter() - start))
            name = layout + (" + compact" if is_compacted else "")
            for label, picked in (("same (cache-warm)", chains[-1:]),
                                  (f"{len(spread)} different", [chains[i] for i in spread])):
                p50, low, cpu = match_us(index, picked, repeat)
                report.add(dict(common, op="match", layout=name, chains=label, p50_us=p50,
                                min_us=low, cpu_p50_us=cpu, load_avg=os.getloadavg()[0]))
    all_found = index.match(chains[0]) == chain_blocks
    wall, cpu, num_evicted = [], [], 0
    for _ in range(20):  # 20 chains' worth, one evict() call each
        w, c = time.perf_counter(), time.thread_time()
        num_evicted += len(index.evict(block_bytes * chain_blocks))
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    report.add(dict(common, op="evict", blocks_per_call=num_evicted // 20,
                    p50_us=statistics.median(wall) * 1e6, cpu_p50_us=statistics.median(cpu) * 1e6,
                    all_matched=all_found))
    del index, keys, chains


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench index", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="1000000,10000000",
                        help="comma-separated index sizes in blocks (default: 1M and 10M)")
    parser.add_argument("--chain-blocks", type=int, default=1024,
                        help="blocks per inserted/matched chain (1,024 = a 64K-token prompt)")
    parser.add_argument("--block-bytes", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=200, help="match calls per figure")
    parser.add_argument("--layouts", default="whole,grown,rebuilt",
                        help="index layouts to match on (whole, grown, rebuilt; see above)")
    parser.add_argument("--grow-blocks", type=int, default=4,
                        help="blocks per insert in the grown layout (an agent's turn)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    layouts = args.layouts.split(",")
    unknown = set(layouts) - {"whole", "grown", "rebuilt"}
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; choose from whole, grown, rebuilt")
    report = Report("bench index", args.json)
    for num_blocks in (int(b) for b in args.blocks.split(",")):
        bench_size(report, num_blocks, args.chain_blocks, args.block_bytes, args.repeat,
                   layouts, args.grow_blocks)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
