"""Scheduler configuration: the policy by name and the thresholds of paper.md §8."""
from __future__ import annotations

from dataclasses import dataclass

from dualkv.errors import InvalidArgument


@dataclass(frozen=True)
class Policy:
    """What a named policy turns on (paper.md §11, §16.3)."""

    name: str
    is_smart: bool  # Algorithm 1 + two-level DE choice; otherwise round robin
    is_layerwise: bool  # layerwise prefill: no HBM cap on the PE batch, transfers overlap
    side: str  # read side: "pe" always, "rr" alternate, "queue" shorter node read queue,
    #            "split" a prefix of the hit on each side, sized by both read queues (split.py)
    is_io_free: bool  # Oracle: reads, H2D/D2H and PE->DE transfers cost nothing


POLICIES = {
    "basic": Policy("basic", False, False, "pe", False),
    "layer": Policy("layer", False, True, "pe", False),
    "dpl": Policy("dpl", False, True, "rr", False),
    "dualpath": Policy("dualpath", True, True, "queue", False),
    "oracle": Policy("oracle", True, True, "queue", True),
    # DualPath's PE/DE choice with the naive read side: the baseline of the balance metric
    "round_robin": Policy("round_robin", True, True, "rr", False),
    # DualPath with one request's hit read by both sides at once (issue 20, item 6)
    "split": Policy("split", True, True, "split", False),
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise InvalidArgument(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None


def require_one_read_side(policy: str, who: str) -> Policy:
    """The policy, or InvalidArgument when it may split one request's read across both sides
    ("split") and `who` moves a request's hit from one node only (the reference cluster and
    the router do: their engines load a hit through one side's buffer)."""
    spec = get_policy(policy)
    if spec.side == "split":
        raise InvalidArgument(
            f"policy {policy!r} splits a request's read between the PE and DE nodes, which {who} "
            f"cannot run (its engines read a hit on one side); use it in dualkv sim, or choose "
            f"from {', '.join(n for n, p in POLICIES.items() if p.side != 'split')}")
    return spec


@dataclass(frozen=True)
class SchedulerConfig:
    """One scheduler's knobs.

    alpha_tokens: a node read queue at or below this is "short" (paper: tokens a storage NIC
        reads in 3 s). beta_tokens: a PE with more unfinished tokens is overloaded and gets no
        work (paper: tokens one GPU processes in 5 s). z_margin: the 1.05 of the DE choice.
    compute_quota_s: predicted attention time a PE batch may reach (300 ms); None turns the
        intra-engine scheduler off (a PE then takes every ready request).
    split_block_tokens: the "split" policy cuts a hit only at multiples of this (the store's
        block: each side reads whole blocks).
    """

    policy: str = "dualpath"
    alpha_tokens: float = 1.5e6
    beta_tokens: float = 7.0e5
    z_margin: float = 1.05
    compute_quota_s: float | None = 0.3
    split_block_tokens: int = 64

    def __post_init__(self):
        get_policy(self.policy)
        if not self.alpha_tokens >= 0:
            raise InvalidArgument(f"alpha_tokens must be >= 0, got {self.alpha_tokens}")
        if not self.beta_tokens > 0:
            raise InvalidArgument(f"beta_tokens must be > 0, got {self.beta_tokens}")
        if not self.z_margin >= 1.0:
            raise InvalidArgument(f"z_margin must be >= 1, got {self.z_margin}")
        if self.compute_quota_s is not None and not self.compute_quota_s > 0:
            raise InvalidArgument(f"compute_quota_s must be > 0 or None, got {self.compute_quota_s}")
        if self.split_block_tokens < 1:
            raise InvalidArgument(f"split_block_tokens must be >= 1, got {self.split_block_tokens}")

    @property
    def policy_spec(self) -> Policy:
        return POLICIES[self.policy]
