"""The two seams between the prefill forward pass and KV movement.

The prefill engine reads the hit prefix's KV through a `KVSource` and hands each layer's
output KV to a `KVSink`. In one process they are `SlotSource` / `BufferSink` (sources.py):
the hit blocks sit in pool slots filled by `store.load`, and the sink writes into a
`BlockBuffer` standing in for the DE buffer. In the cluster the same two interfaces are
implemented over the transfer engine (branch `transfer`):

- de read path: the DE node loads Full Blocks into its buffer, then one-sided-puts Layer
  Block l of every hit block into the PE's receive region followed by a per-layer notice;
  the PE-side `KVSource.wait_layer(l)` waits for notice l and returns views of that region.
- both paths: `KVSink.put_layer(l, ...)` posts one-sided puts of the layer's Layer Blocks
  into the DE buffer's slots (addresses and rkeys exchanged at rendezvous) plus a notice l;
  the DE's `BlockBuffer.mark_layer_done(l)` is driven by that notice.

Deadlines are absolute `time.monotonic()` values; every wait raises `TimedOut` past its own.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch


class KVSource(Protocol):
    """Layer Blocks of a request's cached prefix, layer by layer."""

    def prepare(self, deadline: float) -> int:
        """Waits until the prefix's storage read is done; returns the usable hit tokens.

        A block that failed to load (missing, corrupt) truncates the hit there: everything
        from it on is recomputed, never served. The result is a multiple of block_tokens.
        """

    def wait_layer(self, layer: int, deadline: float) -> Sequence[torch.Tensor]:
        """Byte views of layer `layer`'s Layer Blocks of the hit blocks, in token order.

        The views stay valid until `release_layer(layer)`.
        """

    def release_layer(self, layer: int) -> None:
        """The engine has copied the layer; its memory may be reused."""

    def close(self) -> None:
        """Frees what the source holds (pool slots, receive regions)."""


class KVSink(Protocol):
    """Receives each layer's KV as the prefill computes it (the path to the DE buffer)."""

    def put_layer(self, layer: int, kv: torch.Tensor, first_token: int) -> None:
        """Starts moving kv = layer KV [n, 2, kv_heads, d] of tokens first_token.. .

        Does not block on the move: the caller gives up kv and must not modify it.
        """

    def finish(self, deadline: float) -> None:
        """Waits for every put to land; raises the first failure or TimedOut."""
