"""Payload keys: AES-256-GCM per domain, with rotation.

A keyring lists keys newest first: the first encrypts, every one decrypts, so rotating is
putting a new key in front and keeping the old ones as long as events they sealed are kept.
A ciphertext is a random 96-bit nonce then AES-GCM's output; its associated data is the
subject and the event id, so a ciphertext moved to another event fails to decrypt. (Random
nonces are safe for about 2**32 messages per key: rotate well before.) AES-GCM over
ChaCha20-Poly1305: with AES instructions it seals a small payload in about half the time.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import ConfigError
from ._subjects import validate_token

KEY_BYTES = 32
NONCE_BYTES = 12

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def new_key() -> str:
    """A new key as `id:base64` (the id from today's date and a random suffix)."""
    key_id = time.strftime("k%Y%m%d-") + secrets.token_hex(3)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


class Keyring:
    """One domain's keys, newest first; `repr` shows their ids, never the keys."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        # (cryptography is imported here, by the processes that encrypt: ~6 MB otherwise)
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._refused = (InvalidTag, ValueError)
        if not keys:
            raise ConfigError("a keyring needs at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            validate_token(key_id, "key id")
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"key {key_id!r} is {len(key)} bytes; AES-256-GCM needs {KEY_BYTES} "
                    "(make one with `bus keys new`)"
                )
            if key_id in self._ciphers:
                raise ConfigError(f"key id {key_id!r} is listed twice")
            self._ciphers[key_id] = AESGCM(key)
        self.current = keys[0][0]
        self._current = self._ciphers[self.current]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """`id:base64key,id:base64key` (newest first)."""
        keys = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            key_id, sep, encoded = item.partition(":")
            if not sep:
                raise ConfigError(f"a key is `id:base64key`; one starts {key_id[:8]!r}...")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"key {key_id!r} is not valid base64") from None
            keys.append((key_id, key))
        return cls(keys)

    @property
    def ids(self) -> list[str]:
        return list(self._ciphers)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self._ciphers)})"

    def encrypt(self, subject: str, event_id: str, payload: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._current.encrypt(nonce, payload, _bound(subject, event_id))

    def decrypt(self, key_id: str, subject: str, event_id: str, data: bytes) -> bytes:
        """The plaintext; Undecryptable saying why there is none. (Once per message read:
        one lookup and the cipher, nothing else.)"""
        try:
            return self._ciphers[key_id].decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], _bound(subject, event_id)
            )
        except KeyError:
            raise Undecryptable(
                f"unknown key id {key_id[:60]!r} (known: {', '.join(self._ciphers)})"
            ) from None
        except self._refused:
            raise Undecryptable(
                f"the ciphertext does not authenticate under key {key_id} (tampered, "
                "or moved from another event or subject)"
            ) from None


class Undecryptable(Exception):
    """Why a ciphertext gave no plaintext (the reader dead-letters it with this reason)."""


def _bound(subject: str, event_id: str) -> bytes:
    return f"{subject}\n{event_id}".encode()
