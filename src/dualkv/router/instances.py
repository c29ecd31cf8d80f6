"""The vLLM instances behind the router: where they are, what they run, and how loaded they are.

Load comes from two places. Each instance's Prometheus endpoint (`/metrics`, which every
`vllm serve` has) gives its running and waiting requests, its KV cache use and size, and its
block size; a failed scrape marks it down (and a later good one up). The router adds what it
has sent since: requests in flight on the instance and their prompt tokens (the paper's
`seq` and `tok`, §8.1), and the hit tokens of reads it placed on the instance's node that have
not ended (the node's read queue).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from dualkv.errors import InvalidArgument

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    """Prometheus text format -> {metric name: [(labels, value), ...]}; comments skipped."""
    samples: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, _, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), number))
    return samples


def _total(samples, name: str) -> float | None:
    rows = samples.get(name)
    return None if not rows else sum(v for _, v in rows)


@dataclass
class VllmLoad:
    """One scrape of an instance's /metrics."""
    running: int
    waiting: int
    kv_usage: float          # fraction of KV pages in use
    num_blocks: int | None   # KV pages (cache_config_info)
    block_size: int | None   # tokens per page

    @classmethod
    def from_metrics(cls, text: str) -> VllmLoad:
        samples = parse_metrics(text)
        running = _total(samples, "vllm:num_requests_running")
        waiting = _total(samples, "vllm:num_requests_waiting")
        if running is None or waiting is None:
            raise InvalidArgument("not a vLLM metrics page (no vllm:num_requests_running / "
                                  "vllm:num_requests_waiting)")
        usage = _total(samples, "vllm:kv_cache_usage_perc") or 0.0
        num_blocks = block_size = None
        for labels, _ in samples.get("vllm:cache_config_info", []):
            try:
                num_blocks = int(labels["num_gpu_blocks"])
                block_size = int(labels["block_size"])
            except (KeyError, ValueError):
                pass
        return cls(int(running), int(waiting), float(usage), num_blocks, block_size)

    @property
    def free_tokens(self) -> float:
        if self.num_blocks is None or self.block_size is None:
            return float("inf")
        return max(0.0, 1.0 - self.kv_usage) * self.num_blocks * self.block_size


@dataclass
class Instance:
    name: str
    role: str                # "prefill" or "decode"
    url: str                 # http://host:port
    node: int                # scheduler group / node id
    alive: bool = False
    load: VllmLoad | None = None
    scraped_at: float = 0.0
    down_reason: str = "not scraped yet"
    inflight: dict[int, int] = field(default_factory=dict)   # rid -> prompt tokens
    reads: dict[int, int] = field(default_factory=dict)      # rid -> hit tokens still to read
    stats: dict = field(default_factory=lambda: {"requests": 0, "failures": 0,
                                                 "store_read_tokens": 0, "store_read_bytes": 0})

    def __post_init__(self):
        if self.role not in ("prefill", "decode"):
            raise InvalidArgument(f"instance role must be prefill or decode, got {self.role!r}")
        if not self.url.startswith(("http://", "https://")):
            raise InvalidArgument(f"instance URL must start with http:// or https://: {self.url!r}")
        self.url = self.url.rstrip("/")

    def mark(self, alive: bool, reason: str = "") -> None:
        self.alive = alive
        self.down_reason = "" if alive else reason

    def read_q(self) -> int:
        return sum(self.reads.values())

    def report(self) -> tuple[int, int, float]:
        """(unfinished requests, their prompt tokens, free KV tokens) for the scheduler: the
        larger of what the instance reported and what the router has in flight there."""
        seq = len(self.inflight)
        if self.load is not None:
            seq = max(seq, self.load.running + self.load.waiting)
        free = self.load.free_tokens if self.load is not None else float("inf")
        return seq, sum(self.inflight.values()), free

    def status(self) -> dict:
        seq, tok, free = self.report()
        return {"name": self.name, "role": self.role, "url": self.url, "node": self.node,
                "alive": self.alive, "down_reason": self.down_reason, "seq": seq, "tok": tok,
                "free_kv_tokens": None if free == float("inf") else int(free),
                "read_q_tokens": self.read_q(), "scraped_s_ago":
                    round(time.monotonic() - self.scraped_at, 3) if self.scraped_at else None,
                **self.stats}
