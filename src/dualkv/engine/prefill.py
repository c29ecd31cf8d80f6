"""Prefill over (cached prefix KV, new tokens): layerwise (DualPath) and Basic (the baseline).

Layerwise: before layer l's attention the engine waits for layer l's Layer Blocks of the hit
prefix (`KVSource.wait_layer`), attends over cached + new tokens, then hands layer l's KV to
the `KVSink` — hit + new on the pe read path, new only on the de read path, where the hit KV
already sits in the DE buffer — and the move runs while layer l+1 computes. A batch of
requests (or chunks of requests, as `dualkv.sched.PrefillBatcher` forms them) runs as one
forward: projections and MLP over all new tokens at once, attention per request. Only one
layer's KV of the batch (plus the one still in flight to the sinks) is held at a time.

Basic: the whole hit KV of every layer is loaded before the forward, all layers' KV are held
through it, and the prompt KV goes to the sink after the forward: no streaming.

Both take chunks (`PrefillItem.end` before the prompt's end): a chunk's source gives the KV of
[0, cached) (the hit, or the hit and earlier chunks), and an item's optional `keep` sink gets
the KV a later chunk of the same request will need. Both leave the sinks finished and return
the first generated token (greedy) of every request whose prompt they completed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from dualkv.engine.kv import LayerBlockCodec
from dualkv.engine.model import Model
from dualkv.errors import InvalidArgument

READ_SIDES = ("pe", "de")


@dataclass
class PrefillItem:
    """One request (or chunk of one) in a layerwise prefill batch.

    The source provides the KV of tokens [0, cached); the pass computes [cached, end). The sink
    gets [0, end) when `send_cached` (pe read path, first chunk: the DE buffer has nothing yet)
    and [cached, end) otherwise (de read path, or a later chunk). `keep`, for a chunk that is
    not the last, is a second sink for this engine's own copy: it gets [0, end) on a first
    chunk and [cached, end) after, so that it holds [0, end) for the next chunk's source.
    """
    tokens: Any                  # the whole prompt
    source: Any                  # KVSource
    sink: Any                    # KVSink
    read_side: str = "pe"
    end: int | None = None       # None: to the end of the prompt
    first_chunk: bool = True
    keep: Any = None             # KVSink for the next chunk's cached KV, or None

    def __post_init__(self):
        if self.read_side not in READ_SIDES:
            raise InvalidArgument(f"read_side must be one of {READ_SIDES}, got {self.read_side!r}")
        self.tokens = _prompt(self.tokens)
        self.end = len(self.tokens) if self.end is None else int(self.end)
        if not 0 < self.end <= len(self.tokens):
            raise InvalidArgument(f"chunk end {self.end} outside 1..{len(self.tokens)}")

    @property
    def send_cached(self) -> bool:
        return self.read_side == "pe" and self.first_chunk

    @property
    def is_last(self) -> bool:
        return self.end == len(self.tokens)

    def hand_over(self, layer: int, kv, cached: int) -> None:
        """Layer `layer`'s KV of tokens [0, end) to the sink (and the keep sink)."""
        first = 0 if self.send_cached else cached
        self.sink.put_layer(layer, kv[first:], first)  # the sink holds it until it lands
        if self.keep is not None:
            first = 0 if self.first_chunk else cached
            self.keep.put_layer(layer, kv[first:], first)

    def finish(self, deadline: float) -> None:
        self.sink.finish(deadline)
        if self.keep is not None:
            self.keep.finish(deadline)


def _prompt(tokens) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
    if tokens.numel() == 0:
        raise InvalidArgument("prefill needs at least one prompt token")
    return tokens


def _cached_tokens(source, end: int, block_tokens: int, deadline: float) -> int:
    """Usable cached tokens; at least one token is always computed to get the next logits."""
    cached = source.prepare(deadline)
    return cached if cached < end else (end - 1) // block_tokens * block_tokens


@torch.inference_mode()
def prefill_batch(model: Model, items: list[PrefillItem], codec: LayerBlockCodec,
                  timeout_s: float = 30.0) -> list[int | None]:
    """Layerwise prefill of a batch; per item the first token, or None for a non-final chunk."""
    deadline = time.monotonic() + timeout_s
    cached = [_cached_tokens(it.source, it.end, codec.block_tokens, deadline) for it in items]
    sizes = [it.end - c for it, c in zip(items, cached)]
    x = model.embed(torch.cat([it.tokens[c:it.end] for it, c in zip(items, cached)]))
    positions = torch.cat([torch.arange(c, it.end) for it, c in zip(items, cached)])
    positions = positions.to(model.device)
    for layer in range(model.num_layers):
        q, kv_new = model.attention_inputs(layer, x, positions)
        outs, row = [], 0
        for it, c, n in zip(items, cached, sizes):
            kv = torch.empty(model.kv_shape(it.end), dtype=model.dtype, device=model.device)
            if c:
                codec.gather(it.source.wait_layer(layer, deadline), kv, c)
                it.source.release_layer(layer)
            kv[c:] = kv_new[row:row + n]
            outs.append(model.attend(q[row:row + n], kv, c))
            it.hand_over(layer, kv, c)
            row += n
        x = model.layer_output(layer, x, torch.cat(outs))
    for it in items:
        it.finish(deadline)
    return _first_tokens(model, items, x, sizes)


def _first_tokens(model: Model, items, x, sizes) -> list[int | None]:
    """The greedy next token after each item's last row; None for a chunk that is not last."""
    last_rows = torch.tensor(sizes).cumsum(0) - 1
    firsts = model.logits(x[last_rows.to(model.device)]).argmax(-1).tolist()
    return [tok if it.is_last else None for it, tok in zip(items, firsts)]


def prefill_layerwise(model: Model, tokens, source, sink, codec: LayerBlockCodec,
                      read_side: str = "pe", timeout_s: float = 30.0) -> int:
    """Layerwise prefill (DualPath) of one request; returns the first generated token."""
    return prefill_batch(model, [PrefillItem(tokens, source, sink, read_side)], codec,
                         timeout_s)[0]


@torch.inference_mode()
def prefill_basic_batch(model: Model, items: list[PrefillItem], codec: LayerBlockCodec,
                        timeout_s: float = 30.0) -> list[int | None]:
    """The paper's Basic over a batch: every request's whole hit KV (all layers) is loaded
    before the forward, all layers' KV are held through it, and each prompt's KV goes to its
    sink after the forward: no streaming. The forward is batched exactly as `prefill_batch`'s
    (projections and MLP over all new tokens at once, attention per request), and chunks are
    taken as there, so Basic and DualPath differ only in when KV moves, as in the paper. pe
    read side only."""
    deadline = time.monotonic() + timeout_s
    for it in items:
        if it.read_side != "pe":
            raise InvalidArgument("Basic reads on the prefill side only")
    cached = [_cached_tokens(it.source, it.end, codec.block_tokens, deadline) for it in items]
    kvs = [[torch.empty(model.kv_shape(it.end), dtype=model.dtype, device=model.device)
            for _ in range(model.num_layers)] for it in items]
    for it, c, kv in zip(items, cached, kvs):
        if c:
            for layer in range(model.num_layers):
                codec.gather(it.source.wait_layer(layer, deadline), kv[layer], c)
                it.source.release_layer(layer)
    sizes = [it.end - c for it, c in zip(items, cached)]
    x = model.embed(torch.cat([it.tokens[c:it.end] for it, c in zip(items, cached)]))
    positions = torch.cat([torch.arange(c, it.end) for it, c in zip(items, cached)])
    positions = positions.to(model.device)
    for layer in range(model.num_layers):
        q, kv_new = model.attention_inputs(layer, x, positions)
        outs, row = [], 0
        for c, n, kv in zip(cached, sizes, kvs):
            kv[layer][c:] = kv_new[row:row + n]
            outs.append(model.attend(q[row:row + n], kv[layer], c))
            row += n
        x = model.layer_output(layer, x, torch.cat(outs))
    for it, c, kv in zip(items, cached, kvs):
        for layer in range(model.num_layers):
            it.hand_over(layer, kv[layer], c)
        it.finish(deadline)
    return _first_tokens(model, items, x, sizes)


def prefill_basic(model: Model, tokens, source, sink, codec: LayerBlockCodec,
                  timeout_s: float = 30.0) -> int:
    """The paper's Basic for one request (see prefill_basic_batch)."""
    return prefill_basic_batch(model, [PrefillItem(tokens, source, sink)], codec, timeout_s)[0]


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
