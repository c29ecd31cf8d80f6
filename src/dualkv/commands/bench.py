"""`dualkv bench NAME [args]`: runs dualkv.bench.NAME.main(args)."""
import importlib


def add_arguments(parser):
    parser.add_argument("name", help="which bench (a module of dualkv.bench), e.g. storage")
    parser.add_argument("args", nargs="...", help="the bench's own arguments (see --help)")


def run(args):
    module = importlib.import_module(f"dualkv.bench.{args.name}")
    return module.main(args.args)
