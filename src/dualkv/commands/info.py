"""`dualkv info`: compiled backends, what the machine allows, versions."""
import json


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    import dualkv

    report = dualkv.info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"dualkv {report['version']}  python {report['python']}  {report['machine']}")
    print(f"torch: {report['torch'] or 'not installed'}")
    for section in ("build", "runtime"):
        for key, value in report[section].items():
            print(f"  {section:7s} {key:18s} {value}")
    return 0
