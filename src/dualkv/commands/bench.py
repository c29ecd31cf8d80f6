"""`dualkv bench NAME ...`: runs dualkv.bench.NAME.main with the remaining arguments."""
import importlib

from dualkv.errors import InvalidArgument


def add_arguments(parser):
    parser.add_argument("name", help="benchmark module under dualkv.bench (e.g. sched)")
    parser.add_argument("args", nargs="...", help="arguments for that benchmark")


def run(args):
    try:
        module = importlib.import_module(f"dualkv.bench.{args.name}")
    except ModuleNotFoundError as exc:
        raise InvalidArgument(f"no benchmark named {args.name!r}") from exc
    return module.main(args.args)
