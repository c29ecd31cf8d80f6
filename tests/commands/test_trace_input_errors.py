"""Every command that takes a trace path ends a missing or bad file with one line on stderr and
exit status 2, never a traceback."""
import gzip
import subprocess
import sys

import pytest

from dualkv.cli import main

GOOD = '{"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}\n'
BAD_FILES = {
    "missing": None,
    "not gzip": b"plain text, named .gz",
    "cut short": gzip.compress(GOOD.encode() * 50)[:-20],
    "bad json": GOOD.encode() + b'{"timestamp": \n',
    "no hash_ids": b'{"timestamp": 0, "input_length": 6, "output_length": 1}\n',
}
COMMANDS = {
    "demo store": ["demo", "store", "--no-fio"],
    "demo mooncake": ["demo", "--workload", "mooncake", "--json"],
    "sim online": ["sim", "online"],
    "bench trace": ["bench", "trace"],
}


def bad_trace(tmp_path, kind):
    path = tmp_path / ("trace.jsonl.gz" if kind in ("not gzip", "cut short") else "trace.jsonl")
    if BAD_FILES[kind] is not None:
        path.write_bytes(BAD_FILES[kind])
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_trace_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, command, kind):
    monkeypatch.chdir(tmp_path)  # where demo and sim would put their output
    path = bad_trace(tmp_path, kind)
    assert main(COMMANDS[command] + ["--trace", str(path)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"dualkv {command.split()[0]}") and str(path) in line
    assert captured.out == ""


def test_the_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dualkv.cli", "demo", "store", "--trace",
                           str(tmp_path / "nope.jsonl")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"dualkv demo: Mooncake trace not found: {tmp_path}/nope.jsonl")
