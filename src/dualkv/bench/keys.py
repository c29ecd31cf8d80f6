"""`dualkv bench keys`: block-key chains of one prompt (SHA-256, one native call) against the
same chain computed by a Python hashlib loop, the reference any engine could write itself."""
import argparse

import numpy as np

from dualkv.store import keys
from dualkv._native import C
from dualkv.bench.report import Report, median_time, with_reference


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dualkv bench keys", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="64,1024", help="comma-separated blocks per prompt")
    parser.add_argument("--block-tokens", default="64", help="comma-separated tokens per block")
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    report = Report("bench keys", args.json)
    backend = "libcrypto" if getattr(C, "chain_keys", None) is not None else "hashlib"
    rng = np.random.default_rng(0)
    for block_tokens in (int(b) for b in args.block_tokens.split(",")):
        for num_blocks in (int(b) for b in args.blocks.split(",")):
            tokens = rng.integers(0, 150_000, num_blocks * block_tokens, dtype=np.int32)
            ours = median_time(lambda: keys.chain_keys(tokens, block_tokens), args.repeat) * 1e6
            ref = median_time(lambda: keys.chain_keys_hashlib(tokens, block_tokens, None),
                              max(5, args.repeat // 10)) * 1e6
            row = dict(num_blocks=num_blocks, block_tokens=block_tokens,
                       num_tokens=num_blocks * block_tokens, backend=backend, p50_us=ours,
                       ns_per_block=ours * 1e3 / num_blocks)
            report.add(with_reference(row, "p50_us", "hashlib loop", ref))
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
