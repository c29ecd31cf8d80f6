"""Session keys and sealed boxes of the rendezvous, from the standard library only.

Both sides of a join hold the cluster token; each contributes a fresh 32-byte nonce. The
session key is HMAC-SHA256(token, transcript of both nonces and the session id), so it is new
for every join and known only to holders of the token. From it come one encryption key and one
MAC key per direction. A box is encrypt-then-MAC: the plaintext XORed with an HMAC-SHA256
keystream in counter mode (each key seals exactly one message, so counter 0 is never reused),
then an HMAC-SHA256 tag over the transcript it belongs to and the ciphertext. A valid tag
proves that its sender holds the token *and* took part in this very exchange (both nonces are
in it), which is what makes a captured message useless later.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import msgpack

NONCE_BYTES = 32
_LABEL = b"dualkv-rendezvous-v2"


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def _mac(key: bytes, *parts) -> bytes:
    # msgpack frames every part with its length: no two transcripts encode alike
    return hmac.new(key, msgpack.packb([_LABEL, *parts], use_bin_type=True),
                    hashlib.sha256).digest()


def _keystream(key: bytes, num_bytes: int) -> bytes:
    blocks = (hmac.new(key, i.to_bytes(8, "big"), hashlib.sha256).digest()
              for i in range((num_bytes + 31) // 32))
    return b"".join(blocks)[:num_bytes]


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


@dataclass(frozen=True)
class SessionKeys:
    """The keys of one join: `c2s` seals the joiner's info, `s2c` the server's answer."""

    session_id: bytes
    client_nonce: bytes
    server_nonce: bytes
    key: bytes

    @classmethod
    def derive(cls, token: bytes, session_id: bytes, client_nonce: bytes,
               server_nonce: bytes) -> "SessionKeys":
        key = _mac(token, b"session", session_id, client_nonce, server_nonce)
        return cls(session_id, client_nonce, server_nonce, key)

    def seal(self, direction: str, plaintext: bytes, *bound: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, tag); `bound` are earlier messages the tag also covers."""
        box = _xor(plaintext, _keystream(_mac(self.key, b"enc", direction), len(plaintext)))
        return box, self._tag(direction, box, bound)

    def open(self, direction: str, box: bytes, tag: bytes, *bound: bytes) -> bytes | None:
        """The plaintext, or None when the tag does not match (wrong token, other session,
        altered bytes)."""
        if not hmac.compare_digest(self._tag(direction, box, bound), tag):
            return None
        return _xor(box, _keystream(_mac(self.key, b"enc", direction), len(box)))

    def _tag(self, direction: str, box: bytes, bound) -> bytes:
        return _mac(_mac(self.key, b"mac", direction), self.session_id, self.client_nonce,
                    self.server_nonce, *bound, box)
