"""`dualkv bench NAME ...`: runs dualkv.bench.NAME.main with the remaining arguments."""
import importlib


def add_arguments(parser):
    parser.add_argument("name", help="benchmark module under dualkv.bench (e.g. transfer)")
    parser.add_argument("rest", nargs="...", help="its own arguments (see --help after NAME)")


def run(args):
    module = importlib.import_module(f"dualkv.bench.{args.name}")
    return module.main(args.rest)
