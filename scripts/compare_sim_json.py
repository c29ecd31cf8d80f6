"""Compare two `--json` documents of the same dualkv command key by key, row by row: the check
that a speed change left every simulated figure as it was.

    python scripts/compare_sim_json.py before.json after.json [--ignore wall_s,...]

Prints each differing key and exits 1 if any differs (floats are compared exactly: the
simulator is deterministic, so "unchanged" means bit for bit); exits 0 and prints the
number of rows and keys compared otherwise. The `machine` block is not compared.
"""
import argparse
import json
import sys


def differences(before: dict, after: dict, ignore=()) -> list[str]:
    rows_b, rows_a = before["results"], after["results"]
    out = []
    if len(rows_b) != len(rows_a):
        out.append(f"row count {len(rows_b)} != {len(rows_a)}")
    for i, (b, a) in enumerate(zip(rows_b, rows_a)):
        for key in sorted(set(b) | set(a)):
            if key in ignore:
                continue
            if key not in b or key not in a:
                out.append(f"row {i}: {key} only in {'after' if key in a else 'before'}")
            elif b[key] != a[key]:
                out.append(f"row {i}: {key} {b[key]!r} != {a[key]!r}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--ignore", default="", help="comma list of keys not to compare")
    args = parser.parse_args(argv)
    with open(args.before) as fb, open(args.after) as fa:
        before, after = json.load(fb), json.load(fa)
    diffs = differences(before, after, set(filter(None, args.ignore.split(","))))
    for line in diffs:
        print(line)
    if diffs:
        return 1
    keys = sum(len(row) for row in before["results"])
    print(f"identical: {len(before['results'])} rows, {keys} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
