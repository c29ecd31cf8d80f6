import json
import subprocess
import sys

import dualkv


def test_info_lists_backends():
    report = dualkv.info()
    assert set(report["build"]) >= {"io_uring", "ucx"}
    assert all(isinstance(v, bool) for k, v in report["build"].items() if k != "compiler")


def test_cli_info_json():
    out = subprocess.run([sys.executable, "-m", "dualkv.cli", "info", "--json"],
                         check=True, capture_output=True, text=True).stdout
    assert "build" in json.loads(out)


def test_errors_are_python_exceptions_of_the_right_family():
    assert issubclass(dualkv.InvalidArgument, ValueError)
    assert issubclass(dualkv.StorageError, OSError)
    assert issubclass(dualkv.TimedOut, TimeoutError)


def test_info_reports_the_storage_backend_this_machine_allows():
    dualkv.info()  # twice: the function must survive its own first call
    report = dualkv.info()
    runtime = report["runtime"]
    assert runtime["storage_backend"] in ("io_uring", "posix")
    assert runtime["posix"] == "usable"
    if not report["build"]["io_uring"]:
        assert runtime["storage_backend"] == "posix"
        assert runtime["io_uring"].startswith("unavailable")
