"""vLLM block hashes as store keys, and the store layout both connector roles agree on."""
from __future__ import annotations

import numpy as np

from dualkv.errors import InvalidArgument
from dualkv.integrations.vllm.config import KEY_BYTES
from dualkv.layout import KVLayout


def block_keys(block_hashes, start: int, stop: int, stride: int = 1) -> np.ndarray:
    """Keys of vLLM blocks [start, stop) as an (n, KEY_BYTES) uint8 array.

    `block_hashes` are vLLM's chained hashes (request.block_hashes), one per `hash_block_size`
    tokens; a KV block spans `stride` of them and is named by the last, which covers the
    whole prefix. sha256 hashes are 32 bytes and used as they are; shorter ones (xxhash) are
    zero-padded, which keeps them distinct because they all have the same length.
    """
    picked = [block_hashes[(i + 1) * stride - 1] for i in range(start, stop)]
    if not picked:
        return np.zeros((0, KEY_BYTES), np.uint8)
    if len(picked[0]) > KEY_BYTES:
        raise InvalidArgument(f"vLLM block hash of {len(picked[0])} bytes > {KEY_BYTES}")
    joined = b"".join(bytes(h).ljust(KEY_BYTES, b"\0") for h in picked)
    return np.frombuffer(joined, np.uint8).reshape(len(picked), KEY_BYTES).copy()


def layout_from_kv_cache_config(kv_cache_config) -> KVLayout:
    """One Full Block = every attention layer's page of `block_size` tokens."""
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise InvalidArgument(f"the dualkv connector supports one KV cache group (full "
                              f"attention), this model has {len(groups)}")
    spec = groups[0].kv_cache_spec
    if spec.page_size_bytes % spec.block_size:
        raise InvalidArgument(f"page of {spec.page_size_bytes} B is not whole tokens")
    return KVLayout(num_layers=len(groups[0].layer_names),
                    bytes_per_token_layer=spec.page_size_bytes // spec.block_size,
                    block_tokens=spec.block_size)
