"""dualkv: KV-cache storage, transfer, scheduling and simulation for DualPath inference.

Each command lives in its own module under dualkv.commands (`add_arguments`, `run`); modules
load only when their command runs, so `dualkv info` never imports torch or the
simulator.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "info": ("dualkv.commands.info", "what this build and machine can do"),
    "bench": ("dualkv.commands.bench", "microbenchmarks: dualkv bench NAME --help"),
    "store": ("dualkv.commands.store", "inspect, verify or clean a block store: info|verify|gc"),
    "demo": ("dualkv.commands.demo", "the main job: Basic vs DualPath vs Oracle on a local 1P2D cluster (demo store: trace replay)"),
    "router": ("dualkv.commands.router", "OpenAI-compatible P/D router over vLLM instances (DualPath's scheduler)"),
    "sim": ("dualkv.commands.sim", "simulate a DualPath cluster (offline JCT, online SLO capacity)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualkv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        cmd.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv=None) -> int:
    from dualkv.errors import InvalidArgument

    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (FileNotFoundError, InvalidArgument) as exc:  # a bad input: one line, as argparse's
        print(f"dualkv {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
