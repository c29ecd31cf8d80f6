"""A small Llama-style decoder (GQA, RoPE, RMSNorm, SwiGLU), split into the steps that
layerwise prefill and decode interleave with KV movement.

One decoder layer is `attention_inputs` (norm, Q/K/V projections, RoPE), `attend` (causal
attention of the new tokens' queries over cached + new K/V) and `layer_output` (output
projection, residual, SwiGLU MLP). A layer's KV is one tensor `[tokens, 2, kv_heads, head_dim]`
— K then V of all KV heads per token, exactly the bytes of a Layer Block (see `kv.py`). K is
stored after RoPE, so cached KV is reused as is at any later position.

Weights are named as in Hugging Face Llama checkpoints so `checkpoint.py` loads them directly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dualkv.engine.config import ModelConfig, torch_dtype
from dualkv.errors import InvalidArgument

ROW_QUANTUM = 4  # see Model._pad_rows
ATTN_TILE = 64  # keys per tile of the batch-invariant attention


def layer_weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"self_attn.q_proj.weight": (q_dim, cfg.hidden),
            "self_attn.k_proj.weight": (kv_dim, cfg.hidden),
            "self_attn.v_proj.weight": (kv_dim, cfg.hidden),
            "self_attn.o_proj.weight": (cfg.hidden, q_dim),
            "mlp.gate_proj.weight": (cfg.ffn, cfg.hidden),
            "mlp.up_proj.weight": (cfg.ffn, cfg.hidden),
            "mlp.down_proj.weight": (cfg.hidden, cfg.ffn),
            "input_layernorm.weight": (cfg.hidden,),
            "post_attention_layernorm.weight": (cfg.hidden,)}


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, by Hugging Face name."""
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden),
              "model.norm.weight": (cfg.hidden,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.hidden)
    for layer in range(cfg.num_layers):
        for name, shape in layer_weight_shapes(cfg).items():
            shapes[f"model.layers.{layer}.{name}"] = shape
    return shapes


def seeded_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic fp32 weights on CPU: the same seed gives the same model on any device."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(cfg).items():
        if len(shape) == 1:  # norm gains near 1, not exactly 1, so a wrong norm shows up
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            std = 1.0 if "embed" in name else 1.0 / math.sqrt(shape[1])
            weights[name] = std * torch.randn(shape, generator=gen)
    return weights


def _pad_keys(tile: torch.Tensor) -> torch.Tensor:
    """Pads [heads, 1, n, d] keys or values with zeros to ATTN_TILE rows."""
    pad = tile.new_zeros(tile.shape[:2] + (ATTN_TILE - tile.shape[2], tile.shape[3]))
    return torch.cat((tile, pad), 2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Model:
    """The decoder's weights on one device, and the per-layer steps of its forward pass."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], device="cpu",
                 batch_invariant: bool = False):
        missing = sorted(set(weight_shapes(cfg)) - set(weights))
        if missing:
            raise InvalidArgument(f"checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
        self.cfg, self.device, self.dtype = cfg, torch.device(device), torch_dtype(cfg.dtype)
        self.batch_invariant = batch_invariant
        self.w = {}
        for name, shape in weight_shapes(cfg).items():
            if tuple(weights[name].shape) != shape:
                raise InvalidArgument(f"{name} has shape {tuple(weights[name].shape)}, "
                                      f"the config needs {shape}")
            # A fresh, allocator-aligned copy: safetensors' mmap'd tensors sit at arbitrary
            # offsets, and MKL rounds differently for differently aligned operands.
            self.w[name] = weights[name].to(self.device, self.dtype).clone(
                memory_format=torch.contiguous_format)
        for name, value in weights.items():  # optional biases (Qwen2-style q/k/v bias)
            if name.endswith(".bias") and "self_attn" in name:
                self.w[name] = value.to(self.device, self.dtype).contiguous()
        if cfg.tie_embeddings:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
        self.inv_freq = (1.0 / cfg.rope_theta ** half).to(self.device)

    @classmethod
    def from_seed(cls, cfg: ModelConfig, seed: int = 0, device="cpu",
                  batch_invariant: bool = False) -> Model:
        return cls(cfg, seeded_weights(cfg, seed), device, batch_invariant)

    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    def kv_shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        return (num_tokens, 2, self.cfg.num_kv_heads, self.cfg.head_dim)

    def _pad_rows(self, x: torch.Tensor) -> torch.Tensor:
        """With batch_invariant, row counts are padded to a multiple of ROW_QUANTUM.

        MKL's CPU GEMM picks another kernel, with another summation order, for a few rows
        (1-3, 5-7, 9-11): a token's KV computed in a decode step (1 row) then differs in the
        last bits from the same token in a prefill. Padding makes every token's result
        independent of how many tokens share its matmul, so cached and recomputed KV are
        byte-equal on CPU. Measured on MKL 2024.2 / AVX2; GPU BLAS gives no such guarantee.
        """
        rows = x.shape[-2]
        if not self.batch_invariant or rows % ROW_QUANTUM == 0:
            return x
        pad = x.new_zeros(x.shape[:-2] + (ROW_QUANTUM - rows % ROW_QUANTUM, x.shape[-1]))
        return torch.cat((x, pad), dim=-2)

    def _linear(self, x, prefix):
        out = F.linear(self._pad_rows(x), self.w[prefix + ".weight"], self.w.get(prefix + ".bias"))
        return out[:x.shape[0]]

    def _rms_norm(self, x, name):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps)
        return self.w[name] * x32.to(self.dtype)

    def _rope(self, x, positions):
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        x32 = x.float()
        return (x32 * angles.cos() + rotate_half(x32) * angles.sin()).to(self.dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.cfg.vocab_size:
            raise InvalidArgument(f"token ids must lie in [0, {self.cfg.vocab_size})")
        return self.w["model.embed_tokens.weight"][tokens.to(self.device)]

    def attention_inputs(self, layer: int, x: torch.Tensor, positions: torch.Tensor):
        """Queries [n, heads, d] and this layer's KV [n, 2, kv_heads, d] of the n tokens in x."""
        cfg, prefix = self.cfg, f"model.layers.{layer}."
        h = self._rms_norm(x, prefix + "input_layernorm.weight")
        n = x.shape[0]
        q = self._linear(h, prefix + "self_attn.q_proj").view(n, cfg.num_heads, cfg.head_dim)
        k = self._linear(h, prefix + "self_attn.k_proj").view(n, cfg.num_kv_heads, cfg.head_dim)
        v = self._linear(h, prefix + "self_attn.v_proj").view(n, cfg.num_kv_heads, cfg.head_dim)
        kv = torch.stack((self._rope(k, positions), v), dim=1)
        return self._rope(q, positions), kv

    def attend(self, q: torch.Tensor, kv: torch.Tensor, first_position: int) -> torch.Tensor:
        """Causal GQA attention of queries at positions first_position.. over kv[0:T]."""
        cfg = self.cfg
        n, group = q.shape[0], cfg.num_heads // cfg.num_kv_heads
        qg = q.view(n, cfg.num_kv_heads, group, cfg.head_dim).permute(1, 2, 0, 3)
        if self.batch_invariant:
            qg = self._pad_rows(qg)
        keys = kv[:, 0].permute(1, 0, 2).unsqueeze(1)      # [kv_heads, 1, T, d]
        values = kv[:, 1].permute(1, 0, 2).unsqueeze(1)
        q_pos = torch.arange(first_position, first_position + qg.shape[2], device=q.device)
        attend = self._attend_tiled if self.batch_invariant else self._attend_whole
        out = attend(qg, keys, values, q_pos)[..., :n, :]  # [kv_heads, group, n, d]
        return out.permute(2, 0, 1, 3).reshape(n, cfg.num_heads * cfg.head_dim)

    def _attend_whole(self, qg, keys, values, q_pos):
        """torch's fused attention (flash kernel on CPU and CUDA), K/V heads shared by group."""
        kv_heads, group, rows, dim = qg.shape
        visible = torch.arange(keys.shape[2], device=qg.device)[None, :] <= q_pos[:, None]
        out = F.scaled_dot_product_attention(qg.reshape(kv_heads * group, rows, dim),
                                             keys[:, 0], values[:, 0], attn_mask=visible,
                                             enable_gqa=True)
        return out.view(kv_heads, group, rows, dim)

    def _attend_tiled(self, qg, keys, values, q_pos):
        """Online softmax over fixed tiles of ATTN_TILE keys (the last one padded, masked).

        Every sum runs over the same tiles in the same order whatever the number of keys or
        queries, and a fully masked tile is an exact no-op (scale 1, adds 0), so a token's
        output does not depend on how long the sequence is when it is computed.
        """
        total, scale = keys.shape[2], 1.0 / math.sqrt(self.cfg.head_dim)
        shape = qg.shape[:-1]
        best = torch.full(shape, float("-inf"), device=qg.device)
        denom = torch.zeros(shape, device=qg.device)
        acc = torch.zeros(shape + (qg.shape[-1],), device=qg.device)
        for lo in range(0, total, ATTN_TILE):
            k_tile, v_tile = keys[:, :, lo:lo + ATTN_TILE], values[:, :, lo:lo + ATTN_TILE]
            if k_tile.shape[2] < ATTN_TILE:  # masked zero keys: same tile length every time
                k_tile, v_tile = _pad_keys(k_tile), _pad_keys(v_tile)
            scores = torch.matmul(qg, k_tile.transpose(-1, -2)).float() * scale
            hidden = torch.arange(lo, lo + ATTN_TILE, device=qg.device)[None, :] > q_pos[:, None]
            scores = scores.masked_fill(hidden, float("-inf"))
            new_best = torch.maximum(best, scores.amax(-1))
            rescale = torch.exp(best - new_best)
            probs = torch.exp(scores - new_best[..., None])
            denom = denom * rescale + probs.sum(-1)
            acc = acc * rescale[..., None] + torch.matmul(probs.to(self.dtype), v_tile).float()
            best = new_best
        return (acc / denom[..., None]).to(self.dtype)

    def layer_output(self, layer: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        prefix = f"model.layers.{layer}."
        x = x + self._linear(attn, prefix + "self_attn.o_proj")
        h = self._rms_norm(x, prefix + "post_attention_layernorm.weight")
        gate = F.silu(self._linear(h, prefix + "mlp.gate_proj"))
        gated = gate * self._linear(h, prefix + "mlp.up_proj")
        return x + self._linear(gated, prefix + "mlp.down_proj")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self._rms_norm(x, "model.norm.weight")
        return F.linear(self._pad_rows(h), self.w["lm_head.weight"])[:x.shape[0]].float()

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor):
        """Full recompute, no cache: (logits of the last token, [per-layer KV [T, 2, kvh, d]])."""
        tokens = torch.as_tensor(tokens, dtype=torch.int64)
        if tokens.ndim != 1 or tokens.numel() == 0:
            raise InvalidArgument("forward needs a non-empty 1-D token sequence")
        positions = torch.arange(tokens.numel(), device=self.device)
        x, kvs = self.embed(tokens), []
        for layer in range(self.num_layers):
            q, kv = self.attention_inputs(layer, x, positions)
            x = self.layer_output(layer, x, self.attend(q, kv, 0))
            kvs.append(kv)
        return self.logits(x[-1:])[0], kvs
