"""Decode: take the complete prompt KV from the DE buffer, decode greedily, write blocks back.

The engine waits until every layer of the prompt KV is in its `BlockBuffer`, copies it to its
device once, frees the buffer (so host memory is held only between prefill and decode start),
and generates. The first token comes from the prefill. Every Full Block whose KV is complete —
the prompt's uncached blocks and then each 64 tokens of prompt tail + generated tokens — goes
to `writeback(block_index, token_ids, kv)` with kv = [layers, block_tokens, 2, kv_heads, d];
`StoreWriteBack` persists it with `store.store`. A partial last block is never written.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from dualkv.engine.buffer import BlockBuffer
from dualkv.engine.kv import LayerBlockCodec
from dualkv.engine.model import Model
from dualkv.errors import InvalidArgument


class StoreWriteBack:
    """Packs each completed Full Block into a pool slot and stores it under its chain key."""

    def __init__(self, store, codec: LayerBlockCodec, first_block: int = 0, prior_key=None):
        if first_block and prior_key is None:
            raise InvalidArgument("writing from block > 0 needs the key of the block before")
        self.store, self.codec = store, codec
        self.next_block, self.prior_key = first_block, prior_key
        self._pending = []  # (handle, slots) of stores in flight

    def __call__(self, block_index: int, token_ids: np.ndarray, kv: torch.Tensor) -> None:
        if block_index != self.next_block:
            raise InvalidArgument(f"block {block_index} written out of order "
                                  f"(expected {self.next_block})")
        key = self.store.chain_keys(np.asarray(token_ids, np.int32), prior=self.prior_key)
        slots = self.store.pool.alloc(1)
        for layer in range(kv.shape[0]):  # the D2H copy, straight into the slot
            self.codec.tensor(self.store.pool.layer_view(int(slots[0]), layer)).copy_(kv[layer])
        self._pending.append((self.store.store(key, slots, parent=self.prior_key), slots))
        self.prior_key, self.next_block = key[0], block_index + 1

    def finish(self, timeout_s: float = 30.0) -> None:
        """Waits for every store; raises StorageError (from the store) or TimedOut."""
        deadline = time.monotonic() + timeout_s
        pending, self._pending = self._pending, []
        try:
            for handle, _ in pending:
                self.store.wait(handle, max(0.0, deadline - time.monotonic()))
        finally:
            for handle, slots in pending:
                self.store.release(handle)
                self.store.pool.free(slots)


@torch.inference_mode()
def decode(model: Model, buffer: BlockBuffer, codec: LayerBlockCodec, prompt, first_token: int,
           max_new_tokens: int, *, num_cached_blocks: int = 0, writeback=None,
           eos_token: int | None = None, timeout_s: float = 30.0) -> list[int]:
    """Generated tokens (first_token included, at most max_new_tokens of them)."""
    prompt = np.asarray(prompt, dtype=np.int32).reshape(-1)
    num_prompt, bt = len(prompt), codec.block_tokens
    if max_new_tokens < 1 or buffer.num_tokens != num_prompt:
        raise InvalidArgument(f"decode needs max_new_tokens >= 1 and a buffer of the prompt's "
                              f"{num_prompt} tokens (got {max_new_tokens}, {buffer.num_tokens})")
    buffer.wait_complete(time.monotonic() + timeout_s)
    # KV exists for every token but the last generated one.
    cache = torch.empty((model.num_layers, num_prompt + max_new_tokens - 1) + codec.token_shape,
                        dtype=model.dtype, device=model.device)
    for layer in range(model.num_layers):
        codec.gather(buffer.layer_views(layer), cache[layer], num_prompt)
    buffer.free()
    seq, generated = list(prompt) + [int(first_token)], [int(first_token)]
    written = _write_complete(writeback, seq, cache, num_prompt, num_cached_blocks, bt)
    while len(generated) < max_new_tokens and generated[-1] != eos_token:
        pos = len(seq) - 1  # the newest token: its KV is computed now
        x = model.embed(torch.tensor([seq[-1]]))
        positions = torch.tensor([pos], device=model.device)
        for layer in range(model.num_layers):
            q, kv_new = model.attention_inputs(layer, x, positions)
            cache[layer, pos] = kv_new[0]
            x = model.layer_output(layer, x, model.attend(q, cache[layer, :pos + 1], pos))
        generated.append(int(model.logits(x)[0].argmax()))
        seq.append(generated[-1])
        written = _write_complete(writeback, seq, cache, pos + 1, written, bt)
    return generated


def _write_complete(writeback, seq, cache, num_kv_tokens, written, bt) -> int:
    """Hands every Full Block complete in [written * bt, num_kv_tokens) to writeback."""
    while writeback is not None and (written + 1) * bt <= num_kv_tokens:
        lo = written * bt
        writeback(written, np.asarray(seq[lo:lo + bt], np.int32), cache[:, lo:lo + bt])
        written += 1
    return written
