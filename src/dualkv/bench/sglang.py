"""`dualkv bench sglang`: SGLang's HiCacheFile against dualkv's HiCache backend, on the same
pages, the same host pool and the same disk, in batches as SGLang's controller issues them.

Per preset (a Llama-8B-shaped MHA page of 8 MiB; a DeepSeek-V3-shaped MLA page of 4.3 MiB):
- set_durable: one batch written and made durable, with the same durability step on both
  sides: dualkv `batch_set_v1` with `fsync` (the batch's pages written, then one syncfs before
  it reports); HiCacheFile the controller's generic path (`get_data_page` per page,
  `batch_set`), then one syncfs of its filesystem (it never syncs itself); both then fsync
  their folder.
- get_cold: the page cache dropped (where permitted; plus fadvise DONTNEED on every file),
  then one batch read into the host pool: dualkv `batch_get_v1`; HiCacheFile the generic path
  (`batch_get` into flat pages, `set_from_flat_data_page`).
- get_warm: the same read again at once.
fio gives the disk's ceiling: O_DIRECT reads of dualkv's own page files (hard links, one
page-sized read each, same queue depth) and O_DIRECT writes of the same bytes with a final
fsync, run next to dualkv's cold get in every round, after it in even rounds and before it in
odd ones (the disk's speed drifts and dips right after a large write, so the median of the
per-round ratios, `ratio_of_rounds`, is the figure to read). The systems alternate too
(dualkv first in even rounds); each row has the medians, every round's figures and paired
ratios, over --repeat >= 3 rounds.
Needs the SGLang venv (`scripts/venv.sh sglang`):
`PYTHONPATH=src ~/.cache/dualkv/venvs/sglang/bin/python -m dualkv.cli bench sglang`.
`--buffered` runs dualkv without O_DIRECT (the backend's `direct_io: false`).
"""
import argparse
import os
import shutil
import tempfile

from dualkv.bench.report import Report, with_rounds
from dualkv.errors import InvalidArgument
from dualkv.bench._sglang_systems import (DualKVSide, HiCacheFileSide, drop_caches, fio_read_gbps,
                                         fio_write_gbps)

# The same step on both sides: dualkv's store makes a batch durable with one syncfs once its
# pages are written; HiCacheFile (which never syncs) gets exactly that after its batch_set.
DURABILITY = "one syncfs per batch, then the folder's fsync (both systems)"

PRESETS = {
    "mha": dict(kind="mha", num_layers=32, page_size=64, num_kv_heads=8, head_dim=128),
    "mla": dict(kind="mla", num_layers=61, page_size=64, kv_lora_rank=512, rope_dim=64),
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="dualkv bench sglang", description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=None, help="a folder on the disk to test (default: a "
                   "temporary folder under the current directory)")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--layout", default="page_first", help="SGLang host layout "
                   "(layer_first, page_first, page_first_direct; page_head for MHA)")
    p.add_argument("--pages", type=int, default=128, help="pages a batch (SGLang sends <= 128)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (>= 3), each system once "
                   "per round in alternating order; medians and per-round ratios are kept")
    p.add_argument("--queue-depth", type=int, default=32)
    p.add_argument("--write-threads", type=int, default=4)
    p.add_argument("--buffered", action="store_true", help="dualkv without O_DIRECT "
                   "(`direct_io: false`): its pages go through the kernel's page cache too")
    p.add_argument("--no-fio", action="store_true")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def run_preset(report, args, name, workdir, has_fio):
    import torch

    from dualkv.testing.sglang_cpu import make_host_pool

    preset = PRESETS[name]
    pool = make_host_pool(preset["kind"], args.layout, num_pages=args.pages,
                          **{k: v for k, v in preset.items() if k != "kind"})
    host_indices = pool.alloc(args.pages * pool.page_size)
    pool.kv_buffer.view(-1).view(dtype=torch.uint8).random_()
    ours = DualKVSide(pool, os.path.join(workdir, f"dualkv-{name}"), args.queue_depth,
                      args.write_threads, direct_io=not args.buffered)
    theirs = HiCacheFileSide(pool, os.path.join(workdir, f"hicachefile-{name}"))
    figures = {side: {op: [] for op in ("set_durable", "get_cold", "get_warm")}
               for side in ("dualkv", "HiCacheFile")}
    fio = {"read": [], "write": []}
    dropped = True
    for rep in range(args.repeat):
        order = [("dualkv", ours), ("HiCacheFile", theirs)]
        for side, system in order if rep % 2 == 0 else order[::-1]:
            keys = system.fresh_keys(args.pages)
            # fio's write pairs with dualkv's durable set: before it in odd rounds, after it
            # (below) in even ones
            is_fio_first = side == "dualkv" and has_fio and rep % 2 == 1
            if is_fio_first:
                fio["write"].append(fio_write(ours, args, workdir))
            figures[side]["set_durable"].append(system.set_durable(keys, host_indices))
            # fio reads the same files next to dualkv's cold get, first in every other round:
            # the disk's speed drifts by up to 3x within a minute and is slower just after a
            # large write, so only a ratio taken within the round, in both orders, is fair.
            if is_fio_first:
                fio["read"].append(fio_read(system, keys, args, workdir))
            dropped &= drop_caches(system.files(keys))
            figures[side]["get_cold"].append(system.get(keys, host_indices))
            figures[side]["get_warm"].append(system.get(keys, host_indices))
            if side == "dualkv" and has_fio:
                if not is_fio_first:
                    fio["read"].append(fio_read(system, keys, args, workdir))
                    fio["write"].append(fio_write(ours, args, workdir))
    base = {"preset": name, "kind": preset["kind"], "layout": args.layout,
            "page_bytes": ours.page_bytes, "pages": args.pages, "direct_io": ours.is_direct(),
            "io_path": ours.io_path(), "durability": DURABILITY,
            "store_backend": ours.store_backend(), "caches_dropped": dropped}
    for op in ("set_durable", "get_cold", "get_warm"):
        # rounds pair up: both systems ran each op once per round, in alternating order
        report.add(with_rounds(dict(base, op=op), "gbps", "HiCacheFile",
                               figures["dualkv"][op], figures["HiCacheFile"][op]))
        fio_op = {"set_durable": "write", "get_cold": "read"}.get(op)
        if has_fio and fio_op:
            report.add(with_rounds(dict(base, op=op, ref_op=f"fio O_DIRECT {fio_op}"), "gbps",
                                   "fio", figures["dualkv"][op], fio[fio_op]))
    ours.close()
    theirs.close()


def fio_write(ours, args, workdir) -> float:
    return fio_write_gbps(args.pages, ours.file_bytes, args.queue_depth, workdir)


def fio_read(system, keys, args, workdir) -> float:
    return fio_read_gbps(system.files(keys), system.file_bytes, args.queue_depth, workdir)


def main(argv=None):
    args = parse_args(argv)
    if args.repeat < 3:
        raise InvalidArgument(f"--repeat {args.repeat}: the comparison needs at least 3 rounds")
    from dualkv.testing.sglang_cpu import import_sglang_storage

    import_sglang_storage()
    has_fio = not args.no_fio and shutil.which("fio") is not None
    report = Report("bench sglang", args.json)
    workdir = tempfile.mkdtemp(prefix="dualkv-bench-sglang-", dir=args.dir or os.getcwd())
    try:
        for name in args.presets:
            run_preset(report, args, name, workdir, has_fio)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.finish()
    return 0
