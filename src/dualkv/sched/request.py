"""What the scheduler and its callers exchange: requests, group shapes and load reports."""
from __future__ import annotations

from dataclasses import dataclass

from dualkv.errors import InvalidArgument


def is_side(side, name: str) -> bool:
    """side == name, for read sides and policy sides ("pe", "de", "split", "rr"): identity
    first (they are interned constants), then the cached hashes, then the text. Compiled
    (request.pxd) this is a few C compares; a plain str == is a PyUnicode_Compare call on
    Python < 3.14, and the scheduler and simulator ask ~10 times a turn."""
    return side is name or (side is not None and hash(side) == hash(name) and side == name)


class Request:
    """One prefill+decode request (one agent turn).

    The caller fills the shape; the scheduler fills `pe`, `de` (global engine ids), `pe_node`,
    `de_node`, `read_side` ("pe", "de", or "split": the PE node reads the hit's first
    `pe_read_tokens` tokens and the DE node the rest) and `pe_read_tokens`; the PE batcher
    advances `num_computed`. `tag` (any object) and `slot` (an integer, -1 unless set) are
    free for the caller and never read by the scheduler; compiled, `slot` is a C field, so a
    caller that keeps its own state in arrays indexes them without touching an int object
    (the simulator keeps the agent there).
    """

    __slots__ = ("rid", "prompt_tokens", "hit_tokens", "gen_tokens", "pe", "de", "pe_node",
                 "de_node", "read_side", "num_computed", "tag", "pe_read_tokens", "slot")

    def __init__(self, rid: int, prompt_tokens: int, hit_tokens: int, gen_tokens: int, tag=None):
        if not 0 <= hit_tokens < prompt_tokens:
            raise InvalidArgument(f"need 0 <= hit_tokens < prompt_tokens, got {hit_tokens}, {prompt_tokens}")
        if gen_tokens < 1:
            raise InvalidArgument(f"gen_tokens must be >= 1, got {gen_tokens}")
        self._fill(rid, prompt_tokens, hit_tokens, gen_tokens, tag)

    def _fill(self, rid, prompt_tokens: int, hit_tokens: int, gen_tokens: int, tag) -> None:
        self.rid = rid
        self.prompt_tokens = prompt_tokens  # len_r: context + append
        self.hit_tokens = hit_tokens  # prefix already in storage
        self.gen_tokens = gen_tokens
        self.pe = self.de = self.pe_node = self.de_node = -1
        self.read_side = None
        self.pe_read_tokens = 0  # hit tokens the PE node reads (all of them on the pe side)
        self.num_computed = 0  # miss tokens prefilled so far (chunked prefill)
        self.tag = tag  # free for the caller
        self.slot = -1  # free for the caller (new_request sets it)

    @property
    def miss_tokens(self) -> int:
        return self.prompt_tokens - self.hit_tokens

    @property
    def hbm_tokens(self) -> int:
        """KV tokens a DE must hold for this request: the prompt and everything generated."""
        return self.prompt_tokens + self.gen_tokens

    @property
    def read_node(self) -> int:
        """The node whose storage NIC reads this request's hit: the PE's on the pe read side,
        the DE's on the de side (the one place this rule is written). A split read has two:
        see read_parts."""
        if is_side(self.read_side, "split"):
            raise InvalidArgument(f"request {self.rid} reads on two nodes (split); use read_parts")
        return self.pe_node if is_side(self.read_side, "pe") else self.de_node

    @property
    def de_read_tokens(self) -> int:
        """Hit tokens the DE node reads: the part of the hit after the PE's prefix."""
        return self.hit_tokens - self.pe_read_tokens

    def read_parts(self) -> list[tuple[int, int]]:
        """(node, hit tokens it reads) for every node that reads part of this request's hit:
        one entry on the pe or de side, two on a split."""
        if self.read_side == "split":
            return [(self.pe_node, self.pe_read_tokens), (self.de_node, self.de_read_tokens)]
        return [(self.read_node, self.hit_tokens)]

    @property
    def is_placed(self) -> bool:
        return self.pe >= 0 and self.de >= 0 and self.read_side is not None

    def __repr__(self):
        return (f"Request(rid={self.rid}, len={self.prompt_tokens}, hit={self.hit_tokens}, "
                f"gen={self.gen_tokens}, pe={self.pe}, de={self.de}, side={self.read_side}, "
                f"pe_read={self.pe_read_tokens})")


def new_request(rid, prompt_tokens: int, hit_tokens: int, gen_tokens: int, tag=None,
                slot: int = -1) -> Request:
    """Request(rid, prompt_tokens, hit_tokens, gen_tokens, tag) without the shape checks, for
    a caller that checked every shape at once (the simulator checks its whole workload), and
    with its `slot` set: compiled (request.pxd), a C call that passes the numbers unboxed."""
    request = Request.__new__(Request)
    request._fill(rid, prompt_tokens, hit_tokens, gen_tokens, tag)
    request.slot = slot
    return request


@dataclass(frozen=True)
class GroupSpec:
    """The engines of one node; the node's rank-0 engine (leader) fetches for all of them."""

    group_id: int
    node_id: int
    engine_ids: tuple[int, ...]

    def __post_init__(self):
        if not self.engine_ids:
            raise InvalidArgument(f"group {self.group_id} has no engines")


class EngineReport:
    """What one engine reports on a group fetch (paper.md §8.1). The scheduler updates the
    copy it is given while it assigns within the fetch. A plain class, not a dataclass, so
    request.pxd can compile it to a C struct-backed type (the selection loops read it often)."""

    __slots__ = ("engine_id", "seq", "tok", "free_hbm_tokens")

    def __init__(self, engine_id: int, seq: int, tok: int, free_hbm_tokens: float = float("inf")):
        self.engine_id = engine_id
        self.seq = seq  # unfinished requests
        self.tok = tok  # their total prompt tokens
        self.free_hbm_tokens = free_hbm_tokens  # DEs: HBM left for KV, in tokens

    def __eq__(self, other):
        if not isinstance(other, EngineReport):
            return NotImplemented
        return (self.engine_id, self.seq, self.tok, self.free_hbm_tokens) == \
            (other.engine_id, other.seq, other.tok, other.free_hbm_tokens)

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self):
        return (f"EngineReport(engine_id={self.engine_id}, seq={self.seq}, tok={self.tok}, "
                f"free_hbm_tokens={self.free_hbm_tokens})")


class GroupReport:
    """A group leader's fetch report: its node's disk-read queue (tokens) and its engines.
    A plain class (like EngineReport) so request.pxd can compile it: one per fetch."""

    __slots__ = ("group_id", "read_q", "engines")

    def __init__(self, group_id: int, read_q: int, engines: list[EngineReport] | None = None):
        self.group_id = group_id
        self.read_q = read_q
        self.engines = [] if engines is None else engines

    def __eq__(self, other):
        if not isinstance(other, GroupReport):
            return NotImplemented
        return (self.group_id, self.read_q, self.engines) == (other.group_id, other.read_q, other.engines)

    __hash__ = None

    def __repr__(self):
        return f"GroupReport(group_id={self.group_id}, read_q={self.read_q}, engines={self.engines})"


class FetchResult:
    """assigned: requests given to this group's engines now; placed: requests whose PE, DE
    and read side are all chosen now (the caller starts their read on the read side);
    woken_groups: other DE groups whose private queue just got work (their leaders should
    fetch). A plain class so request.pxd can compile it: one per fetch."""

    __slots__ = ("assigned", "placed", "woken_groups")

    def __init__(self, assigned: list[Request] | None = None, placed: list[Request] | None = None,
                 woken_groups: list[int] | None = None):
        self.assigned = [] if assigned is None else assigned
        self.placed = [] if placed is None else placed
        self.woken_groups = [] if woken_groups is None else woken_groups

    def __eq__(self, other):
        if not isinstance(other, FetchResult):
            return NotImplemented
        return (self.assigned, self.placed, self.woken_groups) == \
            (other.assigned, other.placed, other.woken_groups)

    __hash__ = None

    def __repr__(self):
        return f"FetchResult(assigned={self.assigned}, placed={self.placed}, woken_groups={self.woken_groups})"
