import gzip
from pathlib import Path

import numpy as np
import pytest

import dualkv
from dualkv.errors import InvalidArgument
from dualkv.workloads.mooncake import (PACKAGED_TRACE, TraceRequest, block_tokens_for_id,
                                       default_trace_path, load_trace, request_tokens)

LINE = '{"timestamp": 5, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}\n'


def test_shared_ids_give_shared_prefixes():
    a = TraceRequest(0, 1100, 1, (7, 8, 9))
    b = TraceRequest(0, 700, 1, (7, 8))
    ta, tb = request_tokens(a), request_tokens(b)
    assert ta.dtype == np.int32 and len(ta) == 1100 and len(tb) == 700
    assert np.array_equal(ta[:512], tb[:512])
    assert np.array_equal(ta[512:700], tb[512:700])


def test_different_ids_differ_and_same_id_is_stable():
    assert not np.array_equal(block_tokens_for_id(1), block_tokens_for_id(2))
    assert np.array_equal(block_tokens_for_id(5), block_tokens_for_id(5))


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DUALKV_TRACE"):
        load_trace(tmp_path / "nope.jsonl")


def test_default_is_the_packaged_trace_unless_dualkv_trace_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("DUALKV_TRACE", raising=False)
    package = Path(dualkv.__file__).parent
    assert default_trace_path() == PACKAGED_TRACE and PACKAGED_TRACE.is_file()
    assert PACKAGED_TRACE.is_relative_to(package) and "shared" not in PACKAGED_TRACE.parts
    monkeypatch.setenv("DUALKV_TRACE", str(tmp_path / "t.jsonl"))
    assert default_trace_path() == tmp_path / "t.jsonl"


def test_real_trace_loads(monkeypatch):
    monkeypatch.delenv("DUALKV_TRACE", raising=False)
    requests = load_trace(limit=50)
    assert len(requests) == 50
    for r in requests:
        assert len(r.hash_ids) == (r.input_length + 511) // 512
    assert len(load_trace()) == 12031  # the whole trace, as published


def test_plain_and_gzipped_traces_read_the_same(tmp_path):
    plain, packed = tmp_path / "t.jsonl", tmp_path / "t.jsonl.gz"
    plain.write_text(LINE + "\n" + LINE)
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    want = [TraceRequest(5, 600, 3, (1, 2))] * 2
    assert load_trace(plain) == load_trace(packed) == want
    assert load_trace(packed, limit=1) == want[:1]


@pytest.mark.parametrize("name, content, message", [
    ("t.jsonl.gz", LINE.encode(), "cannot read it: Not a gzipped file"),
    ("t.jsonl.gz", gzip.compress(LINE.encode() * 50)[:-20], "cannot read it"),
    ("t.jsonl", gzip.compress(LINE.encode()), "not UTF-8 text"),
    ("t.jsonl", (LINE + '{"timestamp": 1,\n').encode(), "line 2: not JSON"),
    ("t.jsonl", b"[1, 2]\n", "line 1: not a JSON object"),
    ("t.jsonl", b'{"timestamp": 1, "input_length": 2}\n', "line 1: missing output_length, hash_ids"),
    ("t.jsonl", LINE.replace("[1, 2]", '"x"').encode(), "must be integers"),
    ("t.jsonl", LINE.replace("600", "-1").encode(), "negative"),
    ("t.jsonl", b"\n", "holds no trace requests"),
])
def test_a_bad_trace_file_is_one_invalid_argument(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidArgument, match=message) as caught:
        load_trace(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_directory_is_not_a_trace(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot read it"):
        load_trace(tmp_path)
