"""`dualkv demo store`: replay an agentic trace through the block store and read it back beside fio."""
import os
import random
import shutil
import tempfile


def add_arguments(parser):
    parser.add_argument("--trace", default=None, help="trace file, .jsonl or .jsonl.gz "
                        "(default: $DUALKV_TRACE, else the Mooncake conversation trace shipped "
                        "with dualkv)")
    parser.add_argument("--requests", type=int, default=400, help="trace requests to replay")
    parser.add_argument("--batch", type=int, default=32, help="blocks per load/store call; "
                        "also the queue depth of the cold re-read and of fio")
    parser.add_argument("--reread-blocks", type=int, default=4096,
                        help="blocks re-read cold by dualkv and fio, side by side")
    parser.add_argument("--dir", default=None, help="block directory (default: a temporary "
                        "folder under the current directory, removed afterwards)")
    parser.add_argument("--no-fio", action="store_true")
    parser.add_argument("--json", action="store_true")


def run(args):
    from tqdm import tqdm

    from dualkv.bench.report import Report, with_reference
    from dualkv.demo.store_replay import cold_reread, demo_layout, open_store, replay
    from dualkv.workloads.mooncake import load_trace

    requests = load_trace(args.trace, limit=args.requests)
    workdir = args.dir or tempfile.mkdtemp(prefix="dualkv-demo-", dir=os.getcwd())
    report = Report("demo store", args.json)
    try:
        root, layout = os.path.join(workdir, "blocks"), demo_layout()
        store = open_store(root, layout, args.batch)
        with tqdm(total=len(requests), desc="replaying trace", disable=args.json) as bar:
            figures = replay(store, requests, args.batch, progress=bar)
        if figures.wrong_blocks:
            raise SystemExit(f"{figures.wrong_blocks} loaded Layer Blocks had wrong bytes")
        keys = _stored_keys(store, requests, args.reread_blocks)
        with_fio = not args.no_fio and shutil.which("fio") is not None
        backend = store.backend
        store.close()
        reread = cold_reread(root, layout, keys, args.batch, workdir, with_fio)
        row = {
            "requests": figures.num_requests, "backend": backend,
            "block_bytes": layout.full_block_bytes, "queue_depth": args.batch,
            "blocks": figures.blocks_seen, "hit_ratio": figures.hit_ratio,
            "load_gbps": figures.bytes_loaded / max(figures.load_seconds, 1e-9) / 1e9,
            "store_gbps": figures.bytes_stored / max(figures.store_seconds, 1e-9) / 1e9,
            "reread_blocks": len(keys), "reread_gbps": reread["reread_gbps"],
            "pages": reread["pages"], "ref_pages": reread.get("ref_pages"),
        }
        if with_fio:
            row = with_reference(row, "reread_gbps", "fio", reread["fio_gbps"])
        report.add(row)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.finish()
    return 0


def _stored_keys(store, requests, limit):
    """Up to `limit` distinct stored block keys in random order (a non-sequential re-read)."""
    import numpy as np

    from dualkv.workloads.mooncake import request_tokens

    unique = {}
    for request in requests:
        chain = store.chain_keys(request_tokens(request))
        for key in chain[:store.match(chain, touch=False)]:
            unique.setdefault(key.tobytes(), key)
    picked = list(unique.values())
    random.Random(0).shuffle(picked)
    return np.array(picked[:limit], dtype=np.uint8).reshape(-1, store.cfg.key_bytes)
