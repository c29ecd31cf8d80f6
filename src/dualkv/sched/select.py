"""The selection rules of paper.md §8 as pure functions over engine reports.

They mutate the reports they are given (tok, seq, free HBM) as they assign, exactly as the
paper's pseudo-code updates its counters inside one fetch.
"""
from __future__ import annotations

from array import array
from collections import deque

from dualkv.sched.request import EngineReport, Request


def select_pe(engines: list[EngineReport], read_qs: list[int], alpha: float, beta: float) -> int:
    """Algorithm 1, one step: the index of the engine that takes the next request, or -1.

    C1 (tok > beta) never gets work; C2 (short read queue) comes before C3; inside a class the
    engine with the fewest unfinished tokens wins (lowest index on ties)."""
    best2 = best3 = -1
    tok2 = tok3 = 0  # the winners' tok (valid once best2 / best3 >= 0)
    for i in range(len(engines)):
        e = engines[i]
        if e.tok > beta:
            continue  # C1: overloaded
        read_q = read_qs[i]  # compiled, a double (select.pxd): no object compare per engine
        if read_q <= alpha:
            if best2 < 0 or e.tok < tok2:
                best2, tok2 = i, e.tok
        elif best3 < 0 or e.tok < tok3:
            best3, tok3 = i, e.tok
    return best2 if best2 >= 0 else best3


def assign_pes(queue: deque, engines: list[EngineReport], read_qs: list[int],
               alpha: float, beta: float) -> list[tuple[Request, int]]:
    """Algorithm 1 over the FIFO queue until it empties or every engine is overloaded."""
    out = []
    # queue.popleft() called in place: compiled, a method call without a bound-method object
    # (a fetch pops ~1 request, so binding it once per call cost more than it saved)
    while queue:
        pick = select_pe(engines, read_qs, alpha, beta)
        if pick < 0:
            break
        request = queue.popleft()
        e = engines[pick]
        e.tok += request.prompt_tokens
        e.seq += 1
        out.append((request, pick))
    return out


def pick_de_group(group_tokens: dict[int, float]) -> int:
    """Phase 1: the DE group with the fewest tokens (lowest id on ties)."""
    return min(group_tokens, key=lambda g: (group_tokens[g], g))


class LeastLoaded:
    """Token totals per group, and the group with the fewest (lowest id on ties; the same
    answer as pick_de_group). Phase 1 asks once per request over every DE group, 96 at paper
    scale: a scan of a flat array of doubles, which compiled (select.pxd) is ~100 C compares,
    cheaper than keeping a heap of Python tuples. Totals are exact up to 2**53 tokens."""

    def __init__(self, ids):
        self.ids = sorted(ids)
        self.index = {g: i for i, g in enumerate(self.ids)}
        self.loads = array("d", [0.0]) * len(self.ids)

    @property
    def tokens(self) -> dict:
        return {g: self.loads[i] for i, g in enumerate(self.ids)}

    def set(self, g: int, tokens: float) -> None:
        self.loads[self.index[g]] = tokens

    def add(self, g: int, delta: float) -> None:
        self.loads[self.index[g]] += delta

    def set_at(self, i: int, tokens: float) -> None:
        """set() by position in `ids` (no lookup of the group id)."""
        self.loads[i] = tokens

    def add_at(self, i: int, delta: float) -> None:
        """add() by position in `ids` (no lookup of the group id)."""
        self.loads[i] += delta

    def argmin(self) -> int:
        return self.ids[self.argmin_at()]

    def argmin_at(self) -> int:
        """argmin() as a position in `ids`."""
        # the running minimum in a local: one array read per group; the array is indexed in
        # place (compiled, a memoryview local costs an atomic reference count and a zeroed
        # temporary per call)
        best, least = 0, self.loads[0]
        for i in range(1, len(self.ids)):
            load = self.loads[i]
            if load < least:
                best, least = i, load
        return best


def assign_des(queue: deque, engines: list[EngineReport], z_margin: float) -> list[tuple[Request, int]]:
    """Phase 2 inside one DE group: HBM fit, then Z = z_margin x mean tokens.

    Below Z the engine with the fewest requests wins (spreads decode batch slots); above it
    the one with the fewest tokens (least risk of running out of HBM)."""
    if not queue:
        return []
    free_total, group_tok = 0.0, 0
    for e in engines:
        free_total += e.free_hbm_tokens
        group_tok += e.tok
    fit_tokens, fit_need = 0, 0
    for request in queue:  # R: the longest prefix that fits in the group's free HBM
        need = request.prompt_tokens + request.gen_tokens  # hbm_tokens, read as fields (hot)
        if fit_need + need > free_total:
            break
        fit_need += need
        fit_tokens += request.prompt_tokens
    z = z_margin * (fit_tokens + group_tok) / len(engines)
    out = []
    while queue:  # queue.popleft() in place, as in assign_pes
        request = queue[0]
        pick = _pick_de(engines, request, z)
        if pick < 0:
            break
        queue.popleft()
        e = engines[pick]
        e.tok += request.prompt_tokens
        e.seq += 1
        e.free_hbm_tokens -= request.prompt_tokens + request.gen_tokens  # hbm_tokens
        out.append((request, pick))
    return out


def _pick_de(engines: list[EngineReport], request: Request, z: float) -> int:
    low = high = -1
    low_seq = high_tok = 0  # the winners' seq / tok (valid once low / high >= 0)
    need, size = request.prompt_tokens + request.gen_tokens, request.prompt_tokens  # hbm_tokens
    for i in range(len(engines)):
        e = engines[i]
        if e.free_hbm_tokens < need:
            continue
        if e.tok + size <= z:
            if low < 0 or e.seq < low_seq:
                low, low_seq = i, e.seq
        elif high < 0 or e.tok < high_tok:
            high, high_tok = i, e.tok
    return low if low >= 0 else high


def shorter_queue_side(pe_read_q: float, de_read_q: float) -> str:
    """Read where the node read queue is shorter; ties go to the PE (no extra hop)."""
    return "de" if de_read_q < pe_read_q else "pe"
