"""Mooncake's published conversation trace (FAST'25, Apache-2.0), replayable at any block size.

Each request lists one hash id per 512-token block of its prompt; equal ids mean an equal
prefix block. To replay it through a store we turn every id into a deterministic 512-token
block of token ids (seeded by the id), so requests that share k ids share exactly k × 512
prompt tokens, and any `block_tokens` dividing 512 cuts them into the same shared blocks.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualkv import env
from dualkv.errors import InvalidArgument

TRACE_BLOCK_TOKENS = 512
TRACE_FILE = "mooncake_conversation_trace.jsonl"
PACKAGED_TRACE = Path(__file__).with_name("data") / f"{TRACE_FILE}.gz"  # see data/README.md
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True)
class TraceRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def default_trace_path() -> Path:
    """DUALKV_TRACE, else the trace shipped with the package (data/, gzipped)."""
    override = env.get_str("TRACE")
    return Path(override) if override else PACKAGED_TRACE


def load_trace(path: str | os.PathLike | None = None, limit: int | None = None) -> list[TraceRequest]:
    """The first `limit` requests of a trace, .jsonl or .jsonl.gz (default: default_trace_path()).

    A missing file raises FileNotFoundError; any other unusable file (unreadable, not gzip,
    empty, a line that is not a request) raises InvalidArgument naming the file (and line).
    """
    path = Path(path) if path is not None else default_trace_path()
    if not path.exists():
        raise FileNotFoundError(
            f"Mooncake trace not found: {path} (give a .jsonl or .jsonl.gz file; with no path "
            f"and no DUALKV_TRACE, the trace shipped with dualkv is read)")
    requests, line_number = [], 0
    try:
        with _open_text(path) as f:
            for line_number, line in enumerate(f, 1):
                if limit is not None and len(requests) >= limit:
                    break
                if line.strip():
                    requests.append(_parse_request(line))
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not UTF-8 text (a gzipped trace must end in .gz)") from None
    except ValueError as exc:
        raise InvalidArgument(f"{path}: line {line_number}: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, not gzip, cut short
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidArgument(f"{path}: cannot read it: {reason}") from None
    if not requests and limit != 0:
        raise InvalidArgument(f"{path}: holds no trace requests")
    return requests


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _parse_request(line: str) -> TraceRequest:
    """One trace line as a request; ValueError saying what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        numbers = [int(row[name]) for name in FIELDS[:3]]
        hash_ids = tuple(int(h) for h in row["hash_ids"])
    except (TypeError, ValueError):
        raise ValueError(f"fields {', '.join(FIELDS)} must be integers (hash_ids a list)") from None
    if min(numbers + list(hash_ids)) < 0:
        raise ValueError("negative length, timestamp or hash id")
    return TraceRequest(*numbers, hash_ids)


def block_tokens_for_id(hash_id: int, vocab_size: int = 32000) -> np.ndarray:
    """The 512 int32 token ids that stand for one trace block, the same in every process."""
    rng = np.random.Generator(np.random.Philox(key=hash_id))
    return rng.integers(0, vocab_size, TRACE_BLOCK_TOKENS, dtype=np.int32)


def request_tokens(request: TraceRequest, vocab_size: int = 32000) -> np.ndarray:
    """The prompt of a trace request as int32 tokens: its blocks, the last one cut to length."""
    if not request.hash_ids:
        return np.zeros(0, dtype=np.int32)
    blocks = [block_tokens_for_id(h, vocab_size) for h in request.hash_ids]
    tokens = np.concatenate(blocks)
    return tokens[: request.input_length]
