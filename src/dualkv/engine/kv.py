"""How one layer's KV for a block of tokens is laid out in the bytes of a Layer Block.

A Layer Block of `block_tokens` tokens is exactly the C-contiguous bytes of a tensor
`[block_tokens, 2, num_kv_heads, head_dim]` in the model dtype (native byte order): token t
occupies bytes [t * B, (t + 1) * B) with B = `layout.bytes_per_token_layer`, and within a
token K of KV heads 0..h-1 comes first, then V of the same heads. K is stored after RoPE. The
layer KV the model computes (`Model.attention_inputs`) has the same shape, so a Layer Block is
a plain slice of it: packing is one memcpy per block and reading is a zero-copy view. In a
partial block only the first tokens are meaningful; partial blocks are never stored.
"""
from __future__ import annotations

import numpy as np
import torch

from dualkv.engine.config import ModelConfig, torch_dtype
from dualkv.errors import InvalidArgument


def byte_tensor(buf) -> torch.Tensor:
    """A zero-copy torch uint8 view of a numpy array, torch tensor or writable buffer."""
    if isinstance(buf, torch.Tensor):
        return buf.view(torch.uint8).reshape(-1)
    if isinstance(buf, np.ndarray):
        return torch.from_numpy(buf.reshape(-1).view(np.uint8))
    return torch.frombuffer(buf, dtype=torch.uint8)


class LayerBlockCodec:
    """Converts between a layer's KV tensor [tokens, 2, kv_heads, d] and Layer Block bytes."""

    def __init__(self, cfg: ModelConfig, block_tokens: int = 64):
        self.cfg, self.layout = cfg, cfg.layout(block_tokens)
        self.block_tokens, self.dtype = block_tokens, torch_dtype(cfg.dtype)
        self.token_shape = (2, cfg.num_kv_heads, cfg.head_dim)

    @property
    def layer_block_bytes(self) -> int:
        return self.layout.layer_block_bytes

    def tensor(self, view) -> torch.Tensor:
        """Zero-copy typed view [block_tokens, 2, kv_heads, d] of one Layer Block's bytes."""
        raw = byte_tensor(view)
        if raw.numel() < self.layer_block_bytes:
            raise InvalidArgument(f"a Layer Block needs {self.layer_block_bytes} bytes, "
                                  f"the view has {raw.numel()}")
        typed = raw[:self.layer_block_bytes].view(self.dtype)
        return typed.view(self.block_tokens, *self.token_shape)

    def scatter(self, kv: torch.Tensor, views, first_token: int = 0) -> None:
        """Copies kv (tokens first_token.. of a sequence) into the Layer Blocks that hold them.

        views[i] is the Layer Block of the sequence's block i; first_token may fall mid-block.
        """
        self._check(kv)
        end, bt = first_token + kv.shape[0], self.block_tokens
        if end > len(views) * bt:
            raise InvalidArgument(f"{len(views)} blocks hold {len(views) * bt} tokens, need {end}")
        for block in range(first_token // bt, -(-end // bt)):
            lo, hi = max(first_token, block * bt), min(end, (block + 1) * bt)
            self.tensor(views[block])[lo - block * bt:hi - block * bt].copy_(
                kv[lo - first_token:hi - first_token])

    def gather(self, views, out: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Copies the first num_tokens tokens held by views into out[0:num_tokens]."""
        self._check(out)
        num_tokens = len(views) * self.block_tokens if num_tokens is None else num_tokens
        if num_tokens > min(out.shape[0], len(views) * self.block_tokens):
            raise InvalidArgument(f"cannot gather {num_tokens} tokens from {len(views)} blocks "
                                  f"into {out.shape[0]}")
        bt = self.block_tokens
        for block in range(-(-num_tokens // bt)):
            hi = min(num_tokens, (block + 1) * bt)
            out[block * bt:hi].copy_(self.tensor(views[block])[:hi - block * bt])
        return out[:num_tokens]

    def _check(self, kv: torch.Tensor) -> None:
        if tuple(kv.shape[1:]) != self.token_shape or kv.dtype != self.dtype:
            raise InvalidArgument(f"layer KV must be [tokens, {', '.join(map(str, self.token_shape))}] "
                                  f"{self.dtype}, got {tuple(kv.shape)} {kv.dtype}")
