"""Signed and encrypted events: what a Bus does to a payload before it travels, and checks
before anything reads it (handlers, projections, the edge's reads: all open through here).

    Bus(url, protection=Protection(signer=Signer.from_file("me.seed"),
                                   trusted=["UAB..."], require_signatures=["tasks"],
                                   keys={"tasks": Keyring.parse("k2:...,k1:...")}))

Encrypt, then sign: the signature covers the ciphertext and its key id. A consumer checks
who wrote a message, and refuses a forgery, before spending a decryption on it; a tool that
holds no payload key (a relay, `bus dlq`) can still tell who wrote what; and what was
signed is exactly what is stored, so verifying needs nothing but the stored message. The
ciphertext is bound to its subject and event id by itself (AES-GCM associated data), so
signing the plaintext would add no binding, only hide the signature's meaning from keyless
readers.

Signatures are checked on the domains that require them (`*`: all); elsewhere a signature is
carried, not checked. Events without `Bus-Key-Id` are read as plaintext (those stored before
encryption was turned on): where that matters, require signatures too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ._errors import ConfigError, Rejected
from ._headers import KEY_ID, MSG_ID, SIGNATURE, SIGNER
from ._keyring import Keyring, Undecryptable
from ._signing import Signer, Verifier, signed_bytes

ALL = "*"


class Protection:
    """Signing, signature requirements and payload keys of one Bus (all optional)."""

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        trusted: Iterable[str] = (),
        require_signatures: Iterable[str] = (),
        keys: Mapping[str, Keyring] | None = None,
    ) -> None:
        self.signer = signer
        self.trusted = tuple(trusted)
        self.require_signatures = frozenset(require_signatures)
        if self.require_signatures and not self.trusted:
            raise ConfigError("requiring signatures needs trusted signers' public keys")
        self._verifier = Verifier(self.trusted)
        self.keys = dict(keys or {})
        self._signed_everywhere = ALL in self.require_signatures

    @classmethod
    def from_settings(
        cls,
        signing_seed: str | Path | None = None,
        trusted_signers: Iterable[str] = (),
        require_signatures: Iterable[str] = (),
        encryption_keys: str | None = None,
    ) -> Protection | None:
        """From BUS_SIGNING_SEED (a seed file), BUS_TRUSTED_SIGNERS, BUS_REQUIRE_SIGNATURES
        and BUS_ENCRYPTION_KEYS; None when none is set (nothing to do per message)."""
        trusted, required = tuple(trusted_signers), tuple(require_signatures)
        if not (signing_seed or trusted or required or encryption_keys):
            return None
        return cls(
            signer=Signer.from_file(signing_seed) if signing_seed else None,
            trusted=trusted,
            require_signatures=required,
            keys=parse_domain_keys(encryption_keys) if encryption_keys else None,
        )

    def __repr__(self) -> str:
        signer = self.signer.public_key if self.signer else None
        return f"Protection(signer={signer}, keys={self.keys})"

    def keyring(self, subject: str) -> Keyring | None:
        return self._keyring_of(subject.partition(".")[0])

    def _keyring_of(self, domain: str) -> Keyring | None:
        return self.keys.get(domain) or self.keys.get(ALL)

    def seal(self, subject: str, event_id: str, hdrs: dict[str, str], payload: bytes) -> bytes:
        """Encrypt (where the domain has keys), then sign (with a signer); sets the headers."""
        keyring = self.keyring(subject)
        if keyring is not None:
            payload = keyring.encrypt(subject, event_id, payload)
            hdrs[KEY_ID] = keyring.current
        if self.signer is not None:
            hdrs[SIGNER] = self.signer.public_key
            hdrs[SIGNATURE] = self.signer.sign(signed_bytes(subject, hdrs, payload))
        return payload

    def requires_signature(self, subject: str) -> bool:
        return self._signs(subject.partition(".")[0])

    def _signs(self, domain: str) -> bool:
        return self._signed_everywhere or domain in self.require_signatures

    def open(self, subject: str, data: bytes, hdrs: dict[str, str]) -> bytes:
        """The plaintext of a stored or delivered message; Rejected if it may not be read.
        (This runs for every message read: the subject's domain is taken once.)"""
        domain = subject.partition(".")[0]
        if self._signs(domain):
            why = self._verifier.check(subject, hdrs, data)
            if why is not None:
                raise Rejected(why, subject)
        key_id = hdrs.get(KEY_ID)
        if key_id is None:
            return data
        keyring = self._keyring_of(domain)
        if keyring is None:
            raise Rejected(f"encrypted with key {key_id[:60]!r}, and no keys here", subject)
        try:
            return keyring.decrypt(key_id, subject, hdrs.get(MSG_ID, ""), data)
        except Undecryptable as exc:
            raise Rejected(f"undecryptable: {exc}", subject) from None


def parse_domain_keys(text: str) -> dict[str, Keyring]:
    """`tasks=k2:b64,k1:b64;orders=k9:b64` (newest first; `*=` for every domain), or the
    path of a file holding that, a domain per line."""
    if ":" not in text and "=" not in text:  # (a key's base64 ends in "="): a path
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the encryption keys file {text}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:  # (its text would quote bytes of the keys)
            raise ConfigError(f"the encryption keys file {text} is not text") from None
    keys = {}
    for part in filter(None, (p.strip() for p in text.replace("\n", ";").split(";"))):
        domain, sep, listed = part.partition("=")
        if not sep or not domain.strip():
            raise ConfigError("encryption keys are `domain=id:base64key,...;domain=...`")
        try:
            keys[domain.strip()] = Keyring.parse(listed)
        except ConfigError as exc:
            raise ConfigError(f"encryption keys of {domain.strip()!r}: {exc}") from None
    return keys
