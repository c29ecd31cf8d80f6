"""`kv_connector_extra_config` of the vLLM connector, validated once, and the store namespace.

Both connector roles (scheduler and worker) derive the same namespace from the vLLM config
alone, so the scheduler's prefix match and the worker's loads and saves name the same blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from dualkv.errors import InvalidArgument

KEY_BYTES = 32  # the store's key width; vLLM's sha256 hashes fit exactly, shorter ones are padded


@dataclass(frozen=True)
class ConnectorConfig:
    root: str                    # block directory (a shared filesystem mount across machines)
    layerwise: bool = True       # per-layer load waits and per-layer save staging
    async_load: bool = False     # load between scheduler steps (request waits) instead of in-step
    load_path: str = "direct"    # "direct": store reads into vLLM's pages; "staged": via pool slots
    model_id: str = ""           # namespace override; default: vLLM's model name
    pool_slots: int = 256        # host pool slots for staging saves (and staged loads)
    capacity_bytes: int = 0      # store capacity; 0 = unbounded
    queue_depth: int = 32
    io_backend: str = "auto"     # "auto" | "io_uring" | "posix"
    direct_io: bool = True
    timeout_s: float = 60.0      # deadline of every wait on the store (and of a P/D pull)
    # A step with no token to compute waits up to this long for one of our transfers to end
    # (worker.py, get_finished): vLLM steps such steps back to back, each a round trip between
    # its processes, while a request only waits on a pull or held pages. 0: return at once.
    idle_wait_ms: float = 20.0
    # P/D roles (kv_producer / kv_consumer, docs/vllm-pd.md)
    rendezvous_host: str = "127.0.0.1"  # where a producer's workers accept decode instances
    rendezvous_port: int = 0     # first port (rank r listens on port + r); 0 = any free port
    token: str = ""              # cluster token of the rendezvous; default $DUALKV_CLUSTER_TOKEN
    pull_lease_s: float = 300.0  # a producer frees pages no decode instance pulled after this
    # emulated NICs (pacing.py): "" = no pacing; else the node whose buckets this instance pays
    traffic_node: str = ""
    snic_gbps: float = 0.0       # storage reads, GB/s (0 = unpaced)
    cnic_gbps: float = 0.0       # pulls from other instances, GB/s (0 = unpaced)

    def __post_init__(self):
        if not isinstance(self.root, str) or not self.root:
            raise InvalidArgument("kv_connector_extra_config needs 'root': the block directory")
        if self.load_path not in ("direct", "staged"):
            raise InvalidArgument(f"load_path must be 'direct' or 'staged', got {self.load_path!r}")
        if self.pool_slots <= 0 or self.timeout_s <= 0:
            raise InvalidArgument("pool_slots and timeout_s must be positive")
        if not 0 <= self.idle_wait_ms <= 1e3 * self.timeout_s:
            raise InvalidArgument("idle_wait_ms must be between 0 and timeout_s (in ms)")
        if not (self.snic_gbps >= 0 and self.cnic_gbps >= 0) or "/" in self.traffic_node:
            raise InvalidArgument("snic_gbps and cnic_gbps must be >= 0 and traffic_node a "
                                  "name without '/'")
        if self.pull_lease_s <= self.timeout_s:
            raise InvalidArgument("pull_lease_s must exceed timeout_s: a decode instance starts a "
                                  "pull only when its deadline ends before the producer's lease")

    def cluster_token(self) -> str:
        from dualkv import env

        token = self.token or env.get_str("CLUSTER_TOKEN", "")
        if not token:
            raise InvalidArgument("the P/D roles need a cluster token: kv_connector_extra_config "
                                  "'token' or DUALKV_CLUSTER_TOKEN")
        return token

    @classmethod
    def from_extra(cls, extra: dict | None) -> ConnectorConfig:
        extra = dict(extra or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if "root" not in extra:
            raise InvalidArgument("kv_connector_extra_config needs 'root': the block directory")
        if unknown:
            raise InvalidArgument(f"unknown kv_connector_extra_config keys {unknown}; "
                                  f"known: {sorted(known)}")
        values = {}
        for name, value in extra.items():
            default = getattr(cls, name, None)
            if isinstance(default, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(value)
            values[name] = value
        return cls(**values)


def namespace_parts(vllm_config, kv_cache_config, config: ConnectorConfig,
                    rank: int | None = None) -> tuple[str, str]:
    """(model_id, rank) naming this engine's blocks: model, KV layout and kind of pages, the hash
    algorithm behind the keys, and the parallel rank. Two engines share blocks only when all
    of these agree (and the hash seed does, see docs/vllm.md)."""
    from vllm.platforms import current_platform

    group = kv_cache_config.kv_cache_groups[0]
    spec = group.kv_cache_spec
    cache = vllm_config.cache_config
    model = config.model_id or vllm_config.model_config.model
    model_id = "|".join(str(part) for part in (
        "vllm", model, kv_cache_config.kv_cache_layout, current_platform.device_type,
        type(spec).__name__, spec.num_kv_heads, spec.head_size, spec.dtype, cache.cache_dtype,
        cache.prefix_caching_hash_algo, len(group.layer_names)))
    parallel = vllm_config.parallel_config
    rank = parallel.rank if rank is None else rank
    tp = parallel.tensor_parallel_size
    return model_id, f"tp{rank % tp}of{tp}-pp{rank // tp}of{parallel.pipeline_parallel_size}"
