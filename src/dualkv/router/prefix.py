"""Which prompt prefixes the block store holds, as the router sees them.

Every prompt a prefill instance computed had its whole blocks written to the store (by the
prefill instance, or by the decode instance for a DualPath hit it recomputed). The router keeps
the chained hashes of those blocks, so the hit of a new prompt is the longest run of its whole
blocks seen before, known before any instance is asked. It is an estimate: blocks the store
evicted or found corrupt since are a miss for the instance that reads them, which then computes
them (correct, slower); the router never needs the store itself, only the block size the
instances report.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

from dualkv.errors import InvalidArgument


class PrefixIndex:
    def __init__(self, block_size: int, max_blocks: int = 1 << 22):
        if block_size <= 0 or max_blocks <= 0:
            raise InvalidArgument("block_size and max_blocks must be positive")
        self.block_size, self.max_blocks = block_size, max_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()  # chain key, least recent first

    def _chain(self, tokens: list[int]):
        parent = b""
        for start in range(0, len(tokens) - self.block_size + 1, self.block_size):
            block = tokens[start:start + self.block_size]
            parent = hashlib.blake2b(parent + b"|" + ",".join(map(str, block)).encode(),
                                     digest_size=16).digest()
            yield parent

    def hit_tokens(self, tokens: list[int]) -> int:
        """Tokens of the longest stored prefix of whole blocks, always less than the prompt
        (the last prompt token is computed to sample)."""
        count = 0
        for key in self._chain(tokens):
            if key not in self._blocks:
                break
            self._blocks.move_to_end(key)
            count += self.block_size
        while count >= len(tokens) and count > 0:
            count -= self.block_size
        return count

    def add(self, tokens: list[int]) -> None:
        """The whole blocks of a prompt that was prefilled (and so written to the store)."""
        for key in self._chain(tokens):
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._blocks)
