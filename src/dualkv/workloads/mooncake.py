"""Mooncake's published conversation trace (FAST'25, Apache-2.0), replayable at any block size.

Each request lists one hash id per 512-token block of its prompt; equal ids mean an equal
prefix block. To replay it through a store we turn every id into a deterministic 512-token
block of token ids (seeded by the id), so requests that share k ids share exactly k × 512
prompt tokens, and any `block_tokens` dividing 512 cuts them into the same shared blocks.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualkv import env

TRACE_BLOCK_TOKENS = 512
TRACE_FILE = "mooncake_conversation_trace.jsonl"


@dataclass(frozen=True)
class TraceRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def default_trace_path() -> Path:
    """DUALKV_TRACE, else ../shared/data/ beside the repository (where CI and sessions keep it)."""
    override = env.get_str("TRACE")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "data" / TRACE_FILE


def load_trace(path: str | os.PathLike | None = None, limit: int | None = None) -> list[TraceRequest]:
    path = Path(path) if path is not None else default_trace_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"Mooncake trace not found at {path}; pass its path or set DUALKV_TRACE "
            f"(the file is {TRACE_FILE} from kvcache-ai/Mooncake, FAST25-release/traces)")
    requests = []
    with open(path) as f:
        for line in f:
            if limit is not None and len(requests) >= limit:
                break
            row = json.loads(line)
            requests.append(TraceRequest(int(row["timestamp"]), int(row["input_length"]),
                                         int(row["output_length"]), tuple(row["hash_ids"])))
    return requests


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
