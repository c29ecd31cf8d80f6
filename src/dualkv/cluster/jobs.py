"""What the cluster driver runs: sessions (an agent's conversation, or one trace request), the
turns they produce, and the bookkeeping of one turn in flight."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dualkv.cluster.messages import DecodeResult, Opened, PrefillResult


@dataclass
class Session:
    """A conversation arriving `arrival_s` after the run starts with its first prompt.

    `next_turn(prompt, generated)` gives the next turn's (prompt, max_new_tokens) once a turn
    finishes, or None when the conversation ends (None: a single turn)."""
    arrival_s: float
    prompt: list
    max_new_tokens: int
    next_turn: Callable | None = None


@dataclass
class ClusterTurn:
    generated: list[int]
    num_matched_blocks: int
    num_cached_blocks: int
    de: int            # the DE process (0-based) that decoded it
    read_side: str
    ttft_s: float = 0.0    # submitted -> the PE's prefill reply (the first token)
    decode_s: float = 0.0  # first token -> its last token
    ttst_s: float = 0.0    # submitted -> its second token (the first one decoded)
    submitted_s: float = 0.0  # since the run started
    done_s: float = 0.0
    pe: str = "pe"         # the PE process that prefilled it


@dataclass
class Job:
    """One turn in flight; `rid` changes each time it is (re)submitted to the scheduler."""
    session: int
    prompt: np.ndarray
    gen: int
    submitted_at: float
    keys: np.ndarray = None
    matched: int = 0
    hit_tokens: int = 0
    rid: int = 0
    role: str = ""        # its DE
    pe_role: str = ""     # its PE
    read_side: str = ""
    request: Any = None                # its sched.Request in its PE's queue (batcher state)
    opened: Opened | None = None       # its DE buffer
    recv_offset: int = 0               # where its hit lands in the PE's receive area
    de_pid: int = 0                    # the DE process its buffer was opened in
    first: PrefillResult | None = None  # the PE's prefill reply
    first_at: float = 0.0
    attempts: int = 0

    def turn(self, out: DecodeResult, start: float) -> ClusterTurn:
        first_at, done_at = self.first_at, out.done_at
        second = out.second_at or done_at
        return ClusterTurn(out.generated, self.matched, self.first.num_cached_blocks,
                           int(self.role[2:]), self.read_side, first_at - self.submitted_at,
                           done_at - first_at, second - self.submitted_at,
                           self.submitted_at - start, done_at - start, self.pe_role)
