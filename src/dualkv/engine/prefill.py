"""Prefill over (cached prefix KV, new tokens): layerwise (DualPath) and Basic (the baseline).

Layerwise: before layer l's attention the engine waits for layer l's Layer Blocks of the hit
prefix (`KVSource.wait_layer`), attends over cached + new tokens, then hands layer l's KV to
the `KVSink` — hit + new on the pe read path, new only on the de read path, where the hit KV
already sits in the DE buffer — and the move runs while layer l+1 computes. Only one layer's
KV (plus the one still in flight to the sink) is held at a time.

Basic: the whole hit KV of every layer is loaded before the forward, all layers' KV are held
through it, and the prompt KV goes to the sink after the forward: no streaming.

Both return the first generated token (greedy) and leave the sink finished.
"""
from __future__ import annotations

import time

import torch

from dualkv.engine.kv import LayerBlockCodec
from dualkv.engine.model import Model
from dualkv.errors import InvalidArgument

READ_SIDES = ("pe", "de")


def _prompt(model: Model, tokens) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
    if tokens.numel() == 0:
        raise InvalidArgument("prefill needs at least one prompt token")
    return tokens


def _hit_tokens(source, num_tokens: int, block_tokens: int, deadline: float) -> int:
    """Usable cached tokens; at least one token is always computed to get the next logits."""
    hit = source.prepare(deadline)
    if hit % block_tokens:
        raise InvalidArgument(f"cached prefix of {hit} tokens is not whole blocks")
    return min(hit, (num_tokens - 1) // block_tokens * block_tokens)


@torch.inference_mode()
def prefill_layerwise(model: Model, tokens, source, sink, codec: LayerBlockCodec,
                      read_side: str = "pe", timeout_s: float = 30.0) -> int:
    """Layerwise prefill (DualPath); returns the first generated token."""
    if read_side not in READ_SIDES:
        raise InvalidArgument(f"read_side must be one of {READ_SIDES}, got {read_side!r}")
    deadline = time.monotonic() + timeout_s
    tokens = _prompt(model, tokens)
    total = tokens.numel()
    hit = _hit_tokens(source, total, codec.block_tokens, deadline)
    positions = torch.arange(hit, total, device=model.device)
    x = model.embed(tokens[hit:])
    for layer in range(model.num_layers):
        q, kv_new = model.attention_inputs(layer, x, positions)
        kv = torch.empty(model.kv_shape(total), dtype=model.dtype, device=model.device)
        if hit:
            codec.gather(source.wait_layer(layer, deadline), kv, hit)
            source.release_layer(layer)
        kv[hit:] = kv_new
        x = model.layer_output(layer, x, model.attend(q, kv, hit))
        if read_side == "pe":
            sink.put_layer(layer, kv, 0)
        else:
            sink.put_layer(layer, kv[hit:], hit)
        del kv, kv_new  # the sink holds the only reference until its move lands
    sink.finish(deadline)
    return int(model.logits(x[-1:])[0].argmax())


@torch.inference_mode()
def prefill_basic(model: Model, tokens, source, sink, codec: LayerBlockCodec,
                  timeout_s: float = 30.0) -> int:
    """The paper's Basic: whole hit KV loaded first, no layerwise streaming, pe side only."""
    deadline = time.monotonic() + timeout_s
    tokens = _prompt(model, tokens)
    total = tokens.numel()
    hit = _hit_tokens(source, total, codec.block_tokens, deadline)
    kvs = [torch.empty(model.kv_shape(total), dtype=model.dtype, device=model.device)
           for _ in range(model.num_layers)]
    if hit:
        for layer in range(model.num_layers):
            codec.gather(source.wait_layer(layer, deadline), kvs[layer], hit)
            source.release_layer(layer)
    positions = torch.arange(hit, total, device=model.device)
    x = model.embed(tokens[hit:])
    for layer in range(model.num_layers):
        q, kv_new = model.attention_inputs(layer, x, positions)
        kvs[layer][hit:] = kv_new
        x = model.layer_output(layer, x, model.attend(q, kvs[layer], hit))
    for layer in range(model.num_layers):
        sink.put_layer(layer, kvs[layer], 0)
    sink.finish(deadline)
    return int(model.logits(x[-1:])[0].argmax())


def prefill(model: Model, tokens, source, sink, codec: LayerBlockCodec, mode: str = "dualpath",
            read_side: str = "pe", timeout_s: float = 30.0) -> int:
    """Entry point: mode "dualpath" (layerwise, pe or de read side) or "basic" (pe only)."""
    if mode == "basic":
        if read_side != "pe":
            raise InvalidArgument("Basic reads on the prefill side only (read_side='pe')")
        return prefill_basic(model, tokens, source, sink, codec, timeout_s)
    if mode != "dualpath":
        raise InvalidArgument(f"mode must be 'dualpath' or 'basic', got {mode!r}")
    return prefill_layerwise(model, tokens, source, sink, codec, read_side, timeout_s)
