"""KV layout: the shape of one model's KV-cache and where each Layer Block sits in a Full Block.

A Full Block holds `block_tokens` tokens of every layer. On disk and in a pool slot it is a
header page followed by `num_layers` Layer Blocks, each starting on a 4 KiB boundary, so any
range of layers can be read with O_DIRECT and lands ready to use (no conversion, ever).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

PAGE_BYTES = 4096
HEADER_FIXED_BYTES = 192  # magic, version, fingerprint, key, parent key, counts (block_file.h)
LAYER_CHECKSUM_BYTES = 4  # CRC32C per Layer Block

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "fp8": 1, "float8": 1, "int8": 1}


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def dtype_bytes(dtype: str | int) -> int:
    if isinstance(dtype, int):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_BYTES)} or a byte count")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    bytes_per_token_layer: int  # K and V together (GQA), or the MLA latent + rope part
    block_tokens: int = 64

    def __post_init__(self):
        for name in ("num_layers", "bytes_per_token_layer", "block_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVLayout.{name} must be a positive int, got {value!r}")
        if self.header_bytes > 64 * PAGE_BYTES:
            raise ValueError(f"KVLayout with {self.num_layers} layers needs too large a header")

    @classmethod
    def gqa(cls, num_layers: int, num_kv_heads: int, head_dim: int, dtype="bf16",
            block_tokens: int = 64) -> KVLayout:
        """Grouped-query (or multi-head) attention: K and V of every KV head."""
        return cls(num_layers, 2 * num_kv_heads * head_dim * dtype_bytes(dtype), block_tokens)

    @classmethod
    def mla(cls, num_layers: int, kv_lora_rank: int = 512, rope_dim: int = 64, dtype="bf16",
            block_tokens: int = 64) -> KVLayout:
        """Multi-head latent attention: one compressed latent plus the decoupled RoPE key."""
        return cls(num_layers, (kv_lora_rank + rope_dim) * dtype_bytes(dtype), block_tokens)

    @property
    def layer_block_bytes(self) -> int:
        """Bytes of KV in one Layer Block (one layer, `block_tokens` tokens)."""
        return self.block_tokens * self.bytes_per_token_layer

    @property
    def layer_stride(self) -> int:
        """Distance between Layer Blocks in a Full Block: padded to a page for O_DIRECT."""
        return round_up(self.layer_block_bytes, PAGE_BYTES)

    @property
    def header_bytes(self) -> int:
        return round_up(HEADER_FIXED_BYTES + LAYER_CHECKSUM_BYTES * self.num_layers, PAGE_BYTES)

    @property
    def full_block_bytes(self) -> int:
        """Size of a block file and of a pool slot: header plus every padded Layer Block."""
        return self.header_bytes + self.num_layers * self.layer_stride

    @property
    def payload_bytes(self) -> int:
        """KV bytes of a Full Block without header or padding."""
        return self.num_layers * self.layer_block_bytes

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * self.bytes_per_token_layer

    def layer_offset(self, layer: int) -> int:
        """Byte offset of a Layer Block inside a Full Block (file or slot)."""
        if not 0 <= layer <= self.num_layers:
            raise ValueError(f"layer {layer} outside 0..{self.num_layers}")
        return self.header_bytes + layer * self.layer_stride

    def num_blocks(self, num_tokens: int) -> int:
        """Full blocks in a prompt of `num_tokens`; a partial last block gets no key."""
        return num_tokens // self.block_tokens

    def fingerprint(self, model_id: str = "") -> bytes:
        """16 bytes naming this layout (and model): the key namespace of the store."""
        text = f"dualkv-layout-v1|{model_id}|{self.num_layers}|{self.bytes_per_token_layer}|" \
               f"{self.block_tokens}"
        return hashlib.sha256(text.encode()).digest()[:16]
