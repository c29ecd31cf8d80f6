"""`dualkv store info|verify|gc PATH`: inspect, check and clean a block store directory.

PATH is a store root (holding namespace folders) or one namespace folder.
"""
import dataclasses
import json
import os


def add_arguments(parser):
    parser.add_argument("action", choices=["info", "verify", "gc"])
    parser.add_argument("path", help="store root or namespace folder")
    parser.add_argument("--min-age", type=float, default=600.0,
                        help="gc: remove temporary files older than this many seconds "
                             "(younger ones may belong to a live writer)")
    parser.add_argument("--batch", type=int, default=64, help="verify: blocks per read batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    results = []
    for directory in namespace_dirs(args.path):
        cfg = config_of(directory)
        if args.action == "info":
            results.append(info(directory, cfg))
        elif args.action == "gc":
            results.append(gc(directory, cfg, args.min_age))
        else:
            results.append(verify(directory, cfg, args.batch))
    if args.json:
        print(json.dumps({"command": f"store {args.action}", "results": results}))
    else:
        for row in results:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    if not results:
        print(f"no store namespace under {args.path}")
        return 1
    return 1 if any(r.get("bad", 0) for r in results if args.action == "verify") else 0


def namespace_dirs(path):
    from dualkv.store.config import META_NAME

    if os.path.exists(os.path.join(path, META_NAME)):
        return [path]
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    return [os.path.join(path, n) for n in names
            if os.path.exists(os.path.join(path, n, META_NAME))]


def config_of(directory):
    from dualkv.errors import InvalidArgument
    from dualkv.layout import KVLayout
    from dualkv.store.config import StoreConfig, read_meta

    meta = read_meta(directory)  # checked: the fields below are there and typed
    try:
        layout = KVLayout(meta["num_layers"], meta["bytes_per_token_layer"], meta["block_tokens"])
    except ValueError as exc:  # e.g. a layer count whose header does not fit
        raise InvalidArgument(f"{directory}: meta.json holds no usable layout: {exc}") from exc
    cfg = StoreConfig(os.path.dirname(os.path.abspath(directory)), layout,
                      model_id=meta.get("model_id", ""), rank=meta.get("rank", ""),
                      namespace=meta.get("namespace", ""), key_bytes=meta["key_bytes"],
                      pool_slots=1, cuda="off")
    if os.path.basename(os.path.abspath(directory)) != cfg.namespace_bytes.hex():
        raise SystemExit(f"{directory}: meta.json does not name this namespace folder")
    return cfg


def scan(cfg, remove_bad, remove_temp_after_s):
    """The header scan without opening a store (so `info` changes nothing): the store's own
    BlockIO options, on one posix reader and a one-slot pool, and no index."""
    from dualkv._native import C
    from dualkv.store.config import block_io_options
    from dualkv.store.pool import HostPool

    pool = HostPool(cfg.layout, 1, huge_pages=False, cuda="off")
    scan_cfg = dataclasses.replace(cfg, io_backend="posix", queue_depth=1, num_write_threads=1)
    io = C.BlockIO(block_io_options(scan_cfg), pool.native)
    return io.scan(remove_bad=remove_bad, remove_temp_after_s=remove_temp_after_s)


def describe(directory, cfg):
    layout = cfg.layout
    return {"namespace": os.path.basename(directory), "model_id": cfg.model_id,
            "num_layers": layout.num_layers, "bytes_per_token_layer":
            layout.bytes_per_token_layer, "block_tokens": layout.block_tokens,
            "block_bytes": layout.full_block_bytes}


def info(directory, cfg):
    found = scan(cfg, remove_bad=False, remove_temp_after_s=-1.0)
    return dict(describe(directory, cfg), blocks=len(found["keys"]),
                bytes=found["block_bytes"], bad=found["num_bad"], temp_files=found["num_temp"],
                roots=int((~found["has_parent"]).sum()))


def gc(directory, cfg, min_age):
    found = scan(cfg, remove_bad=True, remove_temp_after_s=min_age)
    return dict(describe(directory, cfg), blocks=len(found["keys"]),
                bad_removed=found["num_bad_removed"], temp_removed=found["num_temp_removed"],
                temp_kept=found["num_temp"] - found["num_temp_removed"])


def verify(directory, cfg, batch):
    """Reads every block in full and checks every checksum; damaged blocks are removed."""
    from dualkv.store import BlockStore

    store = BlockStore(dataclasses.replace(cfg, pool_slots=max(1, batch)))
    dropped = store.num_dropped_on_open
    keys = store.io.scan(remove_bad=True)["keys"]
    slots = store.pool.alloc(min(batch, max(1, len(keys))))
    num_bad = 0
    for start in range(0, len(keys), len(slots)):
        chunk = keys[start:start + len(slots)]
        ok = store.wait(store.load(chunk, slots[:len(chunk)]), timeout=600)
        num_bad += int((~ok).sum())
    store.close()
    return dict(describe(directory, cfg), blocks=len(keys), good=len(keys) - num_bad,
                bad=num_bad + dropped)
