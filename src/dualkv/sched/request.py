"""What the scheduler and its callers exchange: requests, group shapes and load reports."""
from __future__ import annotations

from dataclasses import dataclass, field

from dualkv.errors import InvalidArgument


class Request:
    """One prefill+decode request (one agent turn).

    The caller fills the shape; the scheduler fills `pe`, `de` (global engine ids), `pe_node`,
    `de_node` and `read_side` ("pe" or "de"); the PE batcher advances `num_computed`.
    """

    __slots__ = ("rid", "prompt_tokens", "hit_tokens", "gen_tokens", "pe", "de", "pe_node",
                 "de_node", "read_side", "num_computed", "tag")

    def __init__(self, rid: int, prompt_tokens: int, hit_tokens: int, gen_tokens: int, tag=None):
        if not 0 <= hit_tokens < prompt_tokens:
            raise InvalidArgument(f"need 0 <= hit_tokens < prompt_tokens, got {hit_tokens}, {prompt_tokens}")
        if gen_tokens < 1:
            raise InvalidArgument(f"gen_tokens must be >= 1, got {gen_tokens}")
        self.rid = rid
        self.prompt_tokens = prompt_tokens  # len_r: context + append
        self.hit_tokens = hit_tokens  # prefix already in storage
        self.gen_tokens = gen_tokens
        self.pe = self.de = self.pe_node = self.de_node = -1
        self.read_side = None
        self.num_computed = 0  # miss tokens prefilled so far (chunked prefill)
        self.tag = tag  # free for the caller (the simulator keeps its turn record here)

    @property
    def miss_tokens(self) -> int:
        return self.prompt_tokens - self.hit_tokens

    @property
    def hbm_tokens(self) -> int:
        """KV tokens a DE must hold for this request: the prompt and everything generated."""
        return self.prompt_tokens + self.gen_tokens

    @property
    def is_placed(self) -> bool:
        return self.pe >= 0 and self.de >= 0 and self.read_side is not None

    def __repr__(self):
        return (f"Request(rid={self.rid}, len={self.prompt_tokens}, hit={self.hit_tokens}, "
                f"gen={self.gen_tokens}, pe={self.pe}, de={self.de}, side={self.read_side})")


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


@dataclass(slots=True)
class GroupReport:
    group_id: int
    read_q: int  # the node's disk-read queue, in tokens
    engines: list[EngineReport] = field(default_factory=list)


@dataclass(slots=True)
class FetchResult:
    """assigned: requests given to this group's engines now; placed: requests whose PE, DE
    and read side are all chosen now (the caller starts their read on the read side);
    woken_groups: other DE groups whose private queue just got work (their leaders should
    fetch)."""

    assigned: list[Request] = field(default_factory=list)
    placed: list[Request] = field(default_factory=list)
    woken_groups: list[int] = field(default_factory=list)
