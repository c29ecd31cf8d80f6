"""`dualkv bench trace`: Mooncake's conversation trace replayed through the prefix index.

Every request's prompt becomes tokens (each trace hash id is a deterministic 512-token block,
dualkv.workloads.mooncake), cut into --block-tokens blocks and chained into keys; the index
answers match() (the lookup a store does first) and then holds the missed tail (insert_chain).
Reported: the block hit ratio, the median key-chain cost per block over requests,
lookups/s (match() calls per second of time spent in match) and inserts/s (blocks per second of
time spent in insert_chain, automatic eviction included). A second row replays with a capacity of a
fraction of what the unbounded replay ended up holding, so LRU eviction is in the picture.
"""
import argparse
import statistics
import sys
import time

from dualkv.store import keys
from dualkv.bench.report import Report
from dualkv.errors import InvalidArgument
from dualkv.store.index import PrefixIndex
from dualkv.workloads import mooncake


def prompts(path, limit, block_tokens):
    """Chain keys of every request, computed before the replay so it times only the index."""
    chains, ns_per_block = [], []
    for request in mooncake.load_trace(path, limit):
        tokens = mooncake.request_tokens(request)
        start = time.perf_counter()
        chains.append(keys.chain_keys(tokens, block_tokens))
        if len(chains[-1]):
            ns_per_block.append((time.perf_counter() - start) * 1e9 / len(chains[-1]))
    return chains, statistics.median(ns_per_block)


def replay(chains, block_bytes, capacity_bytes):
    index = PrefixIndex(capacity_bytes=capacity_bytes)
    match_s = insert_s = 0.0
    looked_up = hit = 0
    for chain in chains:
        start = time.perf_counter()
        matched = index.match(chain)
        middle = time.perf_counter()
        if matched < len(chain):
            index.insert_chain(chain[matched:], chain[matched - 1] if matched else None,
                               block_bytes)
        insert_s += time.perf_counter() - middle
        match_s += middle - start
        looked_up += len(chain)
        hit += matched
    return index.stats(), dict(blocks_looked_up=looked_up, blocks_hit=hit,
                               hit_ratio=hit / max(1, looked_up),
                               lookups_per_s=len(chains) / match_s,
                               blocks_matched_per_s=looked_up / match_s,
                               inserts_per_s=(looked_up - hit) / max(insert_s, 1e-9))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench trace", description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=None,
                        help="the .jsonl or .jsonl.gz trace (default: DUALKV_TRACE, else "
                             f"{mooncake.TRACE_FILE}.gz shipped with dualkv)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--block-bytes", type=int, default=1 << 20,
                        help="bytes per stored block, for the capacity (default 1 MiB)")
    parser.add_argument("--capacity-fraction", type=float, default=0.25,
                        help="capacity of the second replay, as a fraction of the unbounded one")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if mooncake.TRACE_BLOCK_TOKENS % args.block_tokens:
        parser.error(f"--block-tokens must divide {mooncake.TRACE_BLOCK_TOKENS}")
    try:
        chains, keys_ns_per_block = prompts(args.trace, args.limit, args.block_tokens)
    except (FileNotFoundError, InvalidArgument) as exc:
        print(f"dualkv bench trace: {exc}", file=sys.stderr)
        return 2
    report = Report("bench trace", args.json)
    common = dict(requests=len(chains), block_tokens=args.block_tokens,
                  keys_p50_ns_per_block=keys_ns_per_block)
    unbounded = None
    for fraction in (None, args.capacity_fraction):
        capacity = 0 if fraction is None else int(unbounded * fraction)
        stats, figures = replay(chains, args.block_bytes, capacity)
        unbounded = unbounded or stats["bytes"]
        report.add(dict(common, capacity_blocks=capacity // args.block_bytes or "unbounded",
                        **figures, blocks_held=stats["num_blocks"],
                        evictions=stats["evictions"]))
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
