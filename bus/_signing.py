"""Ed25519 signatures over an event's payload and identifying headers, with NATS nkeys.

Seeds and public keys are nkeys text (`SU...`, `U...`: what `nsc` and `nk` make), so one tool
makes and stores them; signing and verifying call libsodium through PyNaCl's bindings (what
nkeys wraps, minus its wrappers): its verification is faster than OpenSSL's through
`cryptography` (about 140 against 240 us here, one core of a busy machine), and a verify is
most of what a signed message costs its consumer.

What is signed: the subject, event id, type, version, key id, content type, time, causal
ids and principal (`Bus-Principal`: the edge sets it before the event is signed, so who
published it is part of what the signer vouches for), then the payload (the ciphertext when
encrypted). So a signed payload moved to another subject, replayed under another event id or
credited to another principal no longer verifies; trace, delivery and dead-letter headers
stay free to change.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nkeys

from . import _headers as h
from ._errors import ConfigError

_SIGNED_HEADERS = (
    h.MSG_ID,
    h.EVENT_TYPE,
    h.EVENT_VERSION,
    h.KEY_ID,
    h.CONTENT_TYPE,
    h.OCCURRED_AT,
    h.CORRELATION_ID,
    h.CAUSATION_ID,
    h.PRINCIPAL,  # absent signs as empty: adding one to an event that had none is a change too
)


def signed_bytes(subject: str, hdrs: dict[str, str], payload: bytes) -> bytes:
    """What a signature covers; header values hold no line breaks, so `\\n` separates."""
    fields = [subject, *(hdrs.get(name, "") for name in _SIGNED_HEADERS), ""]
    return "\n".join(fields).encode() + payload


class Signer:
    """Signs with one nkeys seed; `public_key` is what consumers list as trusted."""

    def __init__(self, seed: str | bytes) -> None:
        text = seed.encode() if isinstance(seed, str) else bytes(seed)
        try:
            _, raw = nkeys.decode_seed(text.strip())
            public, self._secret = nacl.bindings.crypto_sign_seed_keypair(bytes(raw))
        except (nkeys.NkeysError, ValueError, TypeError, nacl.exceptions.CryptoError):
            raise ConfigError("the signing seed is not an nkeys seed (`SU...`)") from None
        self.public_key = encode_public(public)

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the signing seed file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:  # (its text would quote bytes of the seed)
            raise ConfigError(f"the signing seed file {path} is not text") from None
        return cls(text)

    @classmethod
    def generate(cls) -> tuple[Signer, str]:
        """A new signer and its seed text (to keep in a file only its owner can read)."""
        raw = secrets.token_bytes(32)
        seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode()
        return cls(seed), seed

    def sign(self, data: bytes) -> str:
        signed = nacl.bindings.crypto_sign(data, self._secret)  # signature, then the data
        return base64.urlsafe_b64encode(signed[:64]).decode()

    def __repr__(self) -> str:  # never the seed
        return f"Signer({self.public_key})"


def encode_public(raw: bytes) -> str:
    src = bytes([nkeys.PREFIX_BYTE_USER]) + raw
    return base64.b32encode(src + nkeys.crc16_checksum(src)).decode().rstrip("=")


def decode_public(text: str) -> bytes:
    """The 32 raw bytes of an nkeys public key (`U...`); ConfigError if it is not one."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise ConfigError(f"{text[:60]!r} is not an nkeys public key")
    if nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        raise ConfigError(f"{text[:60]!r}: bad checksum")
    return raw[1:33]


class Verifier:
    """Checks signatures against trusted public keys; `check` returns why not, or None."""

    def __init__(self, trusted: list[str] | tuple[str, ...]) -> None:
        self._keys = {key: decode_public(key) for key in trusted}

    def check(self, subject: str, hdrs: dict[str, str], payload: bytes) -> str | None:
        signature = hdrs.get(h.SIGNATURE)
        if not signature:
            return f"unsigned: no {h.SIGNATURE} header, and this domain requires signed events"
        signer = hdrs.get(h.SIGNER, "")
        key = self._keys.get(signer)
        if key is None:
            return f"untrusted signer {signer[:60]!r}"
        try:
            raw = base64.urlsafe_b64decode(signature)
            if len(raw) != 64:  # (libsodium takes the first 64 bytes as the signature)
                raise ValueError
            nacl.bindings.crypto_sign_open(raw + signed_bytes(subject, hdrs, payload), key)
        except (nacl.exceptions.CryptoError, binascii.Error, ValueError):
            return (
                "bad signature: the payload or identifying headers differ from what "
                f"{signer} signed (tampered, or replayed under another id or subject)"
            )
        return None
