"""Reference engines on CPU (or CUDA): one agentic turn over a long cached context, per mode.

For each mode — `recompute` (no cache), `basic` (whole hit KV read and loaded before the
forward), `dualpath-pe` and `dualpath-de` (layerwise) — runs `--repeat` turns of
context + a fresh append against a BlockStore that holds the context, and reports the median
TTFT (read + prefill until the first token and the prompt KV are in the DE buffer), decode
tokens/s and the hit. Each repeat uses fresh appended tokens, so every turn has the same hit.
"""
import argparse
import statistics
import tempfile

import numpy as np

from dualkv.bench.report import Report, with_reference

MODES = {"recompute": ("dualpath", "pe"), "basic": ("basic", "pe"),
         "dualpath-pe": ("dualpath", "pe"), "dualpath-de": ("dualpath", "de")}


def parse(argv):
    p = argparse.ArgumentParser(prog="dualkv bench engine", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--context", type=int, default=4096, help="cached tokens before the turn")
    p.add_argument("--append", type=int, default=128)
    p.add_argument("--gen", type=int, default=8)
    p.add_argument("--block-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--root", default=None, help="block directory (default: a temp dir)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import torch

    from dualkv.engine import Model, ModelConfig, run_turn
    from dualkv.store import BlockStore, StoreConfig

    if args.threads:
        torch.set_num_threads(args.threads)

    head_dim = args.hidden // args.heads
    cfg = ModelConfig(vocab_size=4096, hidden=args.hidden, num_layers=args.layers,
                      num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=head_dim,
                      ffn=4 * args.hidden, dtype=args.dtype)
    model = Model.from_seed(cfg, seed=0, device=args.device)
    layout = cfg.layout(args.block_tokens)
    num_slots = 3 * (args.context + args.append + args.gen) // args.block_tokens + 8
    rng = np.random.default_rng(0)
    context = rng.integers(0, cfg.vocab_size, args.context).astype(np.int32)
    report = Report("bench engine", args.json)
    with tempfile.TemporaryDirectory(dir=args.root) as root, \
            BlockStore(StoreConfig(root, layout, pool_slots=num_slots)) as store:
        run_turn(model, store, context, 1)  # persists the context's full blocks
        rows = {}
        for name in args.modes.split(","):
            mode, side = MODES[name]
            ttft, tps, hit = [], [], 0
            for _ in range(args.repeat + 1):  # the first turn warms up
                prompt = np.concatenate([context, rng.integers(0, cfg.vocab_size, args.append)])
                if name == "recompute":
                    prompt = prompt[::-1].copy()  # same length, no stored prefix
                result = run_turn(model, store, prompt.astype(np.int32), args.gen, mode, side)
                ttft.append(result.ttft_s)
                tps.append((args.gen - 1) / result.decode_s)
                hit = result.num_cached_blocks * args.block_tokens
            row = dict(mode=name, threads=torch.get_num_threads(), layers=args.layers,
                       hidden=args.hidden, context=args.context,
                       append=args.append, hit_tokens=hit, device=args.device, dtype=args.dtype,
                       backend=store.backend, ttft_ms=1e3 * statistics.median(ttft[1:]),
                       decode_tokens_per_s=statistics.median(tps[1:]))
            rows[name] = row
            if name != "recompute" and "recompute" in rows:
                row = with_reference(row, "ttft_ms", "recompute", rows["recompute"]["ttft_ms"])
            report.add(row)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
