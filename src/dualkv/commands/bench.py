"""`dualkv bench NAME [args]`: runs dualkv.bench.NAME.main(args) (each bench has its own --help)."""
import argparse
import importlib
import pkgutil


def available() -> list[str]:
    import dualkv.bench

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(dualkv.bench.__path__)
                  if m.name != "report" and not m.name.startswith("_"))


def add_arguments(parser):
    parser.add_argument("name", help="which bench: " + ", ".join(available()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the bench's own arguments")


def run(args):
    if args.name.replace("_", "-") not in available():
        raise SystemExit(f"unknown bench {args.name!r}; available: {', '.join(available())}")
    module = args.name.replace("-", "_")
    return importlib.import_module(f"dualkv.bench.{module}").main(args.args)
