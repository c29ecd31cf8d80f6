"""Decode: take the complete prompt KV from the DE buffer, decode greedily, write blocks back.

The engine waits until every layer of the prompt KV is in its `BlockBuffer`, copies it to its
device once, frees the buffer (so host memory is held only between prefill and decode start),
and generates. The first token comes from the prefill. Every Full Block whose KV is complete —
the prompt's uncached blocks and then each 64 tokens of prompt tail + generated tokens — goes
to `writeback(block_index, token_ids, kv)` with kv = [layers, block_tokens, 2, kv_heads, d];
`StoreWriteBack` persists it with `store.store`. A partial last block is never written.
`Decoder` runs every admitted request in one forward per step (a DE batches all of its
requests); `decode` is the one-request form.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

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
        self.first_block = first_block  # blocks before it were stored already
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


@dataclass
class _Running:
    """One request in the decode batch: its device KV cache and its tokens so far."""
    cache: torch.Tensor           # [layers, prompt + max_new - 1, 2, kv_heads, d]
    seq: list
    generated: list
    max_new_tokens: int
    eos_token: int | None
    writeback: object
    num_written: int

    @property
    def is_done(self) -> bool:
        return len(self.generated) >= self.max_new_tokens or self.generated[-1] == self.eos_token


class Decoder:
    """A decode engine's running batch: every step computes one token of every request."""

    def __init__(self, model: Model, codec: LayerBlockCodec, timeout_s: float = 30.0):
        self.model, self.codec, self.timeout_s = model, codec, timeout_s
        self.running: dict = {}

    @property
    def num_running(self) -> int:
        return len(self.running)

    def admit(self, rid, buffer: BlockBuffer, prompt, first_token: int, max_new_tokens: int, *,
              num_cached_blocks: int = 0, writeback=None, eos_token: int | None = None) -> None:
        """Waits for the complete prompt KV in `buffer`, copies it to the device once, frees
        the buffer, and writes back the prompt's uncached Full Blocks."""
        prompt = np.asarray(prompt, dtype=np.int32).reshape(-1)
        num_prompt, model = len(prompt), self.model
        if max_new_tokens < 1 or buffer.num_tokens != num_prompt or rid in self.running:
            raise InvalidArgument(f"decode of {rid!r} needs max_new_tokens >= 1, a new id and a "
                                  f"buffer of the prompt's {num_prompt} tokens")
        buffer.wait_complete(time.monotonic() + self.timeout_s)
        # KV exists for every token but the last generated one.
        cache = torch.empty((model.num_layers, num_prompt + max_new_tokens - 1)
                            + self.codec.token_shape, dtype=model.dtype, device=model.device)
        for layer in range(model.num_layers):
            self.codec.gather(buffer.layer_views(layer), cache[layer], num_prompt)
        buffer.free()
        req = _Running(cache, prompt.tolist() + [int(first_token)], [int(first_token)],
                       max_new_tokens, eos_token, writeback, num_cached_blocks)
        self._write_complete(req, num_prompt)
        self.running[rid] = req

    @torch.inference_mode()
    def step(self) -> dict:
        """One token for every running request; returns {rid: generated} of those finished."""
        reqs = [r for r in self.running.values() if not r.is_done]
        model = self.model
        if reqs:
            pos = [len(r.seq) - 1 for r in reqs]  # the newest tokens: their KV is computed now
            x = model.embed(torch.tensor([r.seq[-1] for r in reqs]))
            positions = torch.tensor(pos, device=model.device)
            for layer in range(model.num_layers):
                q, kv_new = model.attention_inputs(layer, x, positions)
                outs = []
                for i, (r, p) in enumerate(zip(reqs, pos)):
                    r.cache[layer, p] = kv_new[i]
                    outs.append(model.attend(q[i:i + 1], r.cache[layer, :p + 1], p))
                x = model.layer_output(layer, x, torch.cat(outs))
            for r, p, token in zip(reqs, pos, model.logits(x).argmax(-1).tolist()):
                r.generated.append(token)
                r.seq.append(token)
                self._write_complete(r, p + 1)
        done = {rid: r.generated for rid, r in self.running.items() if r.is_done}
        for rid in done:
            del self.running[rid]
        return done

    def _write_complete(self, req: _Running, num_kv_tokens: int) -> None:
        """Hands every Full Block complete in [num_written * bt, num_kv_tokens) to writeback."""
        bt = self.codec.block_tokens
        while req.writeback is not None and (req.num_written + 1) * bt <= num_kv_tokens:
            lo = req.num_written * bt
            req.writeback(req.num_written, np.asarray(req.seq[lo:lo + bt], np.int32),
                          req.cache[:, lo:lo + bt])
            req.num_written += 1


def decode(model: Model, buffer: BlockBuffer, codec: LayerBlockCodec, prompt, first_token: int,
           max_new_tokens: int, *, num_cached_blocks: int = 0, writeback=None,
           eos_token: int | None = None, timeout_s: float = 30.0) -> list[int]:
    """Decodes one request alone; generated tokens (first_token included, at most
    max_new_tokens of them)."""
    decoder = Decoder(model, codec, timeout_s)
    decoder.admit(0, buffer, prompt, first_token, max_new_tokens,
                  num_cached_blocks=num_cached_blocks, writeback=writeback, eos_token=eos_token)
    while True:
        done = decoder.step()
        if done:
            return done[0]
