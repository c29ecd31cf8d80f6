"""The per-request read split (issue 20, item 6): one request's hit read by both sides.

The whole-request rule (select.shorter_queue_side) puts all of a request's hit on one storage
NIC, so a long hit waits for one NIC while the other side's may sit idle. Splitting gives the
PE side a prefix of the hit and the DE side the rest, sized so both reads finish together:
with equal NICs, the PE side's backlog plus its part equals the DE side's backlog plus its
part. The cut falls on a block boundary because each side reads whole blocks from storage.
"""
from __future__ import annotations


def split_read(hit_tokens: int, pe_read_q: float, de_read_q: float, block_tokens: int) -> int:
    """Tokens of the hit the PE side reads: the prefix [0, k); the DE side reads [k, hit).

    k solves pe_read_q + k = de_read_q + (hit - k), rounded to the nearest block and clamped to
    [0, hit]; so k = hit (all on the PE) when the DE queue leads by the whole hit or more, and
    0 (all on the DE) when the PE queue does. Ties round up (towards the PE: no extra hop)."""
    if hit_tokens <= 0:
        return 0
    ideal = (hit_tokens + de_read_q - pe_read_q) / 2.0
    k = int(ideal / block_tokens + 0.5) * block_tokens if ideal > 0 else 0
    return min(k, hit_tokens)


def split_side(pe_read_tokens: int, hit_tokens: int) -> str:
    """The request's read_side for a split of `pe_read_tokens`: "pe" or "de" when one side
    got it all (then it is read exactly as the whole-request policies read it), else "split"."""
    if pe_read_tokens >= hit_tokens:
        return "pe"
    return "de" if pe_read_tokens == 0 else "split"
