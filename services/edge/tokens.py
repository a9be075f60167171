"""JWT bearer tokens beside API keys: verified against a shared secret (HS256), a public key
(PEM) or a JWKS URL, with the algorithms pinned to the key's kind (never `none`, never HS
with a public key). A token is verified once and kept until it expires (a bounded cache),
so the hot read path pays a dictionary look-up, not a signature check.

Refusals are fixed sentences: nothing of the token, or of the library's message, is echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from bus import ConfigError

from .grants import valid_scope

LEEWAY = 30.0  # seconds of clock skew allowed on exp / nbf
MAX_TOKEN = 8192  # characters: a longer bearer value is refused unparsed
CACHE_SIZE = 10_000  # distinct tokens kept verified
JWKS_TIMEOUT = 5.0
JWKS_MAX_BYTES = 256 * 1024
JWKS_MAX_KEYS = 64
JWKS_REFRESH = 10.0  # at most one fetch per this many seconds on an unknown kid
SCOPE_PREFIX = "bus:"
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA")
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_SUB = re.compile(r"[!-~]{1,256}")  # it travels in an event header: no spaces nor controls
_JWK_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class InvalidToken(Exception):
    """A token refused; `reason` is safe to show (it never quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key's name or a token's `sub`, with the scopes it holds."""

    name: str
    scopes: frozenset[str]


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidAudienceError, "the token's audience is not accepted"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim (exp, sub)"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
)


def _reason(exc: Exception) -> str:
    return next((text for cls, text in _REASONS if isinstance(exc, cls)), "malformed token")


def _pem_algorithms(key: Any) -> list[str]:
    """The one family a public key may verify (its kind decides, never the token)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return [_CURVES[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ConfigError("BUS_JWT_PUBLIC_KEY: want an RSA, EC (P-256/384/521) or Ed25519 public key")


def _jwk(entry: dict[str, Any]) -> tuple[Any, list[str]] | None:
    """A JWKS entry as (key, algorithms); None for what we never accept (e.g. `oct`)."""
    kty = entry.get("kty")
    key: Any
    algorithms: list[str]
    try:
        if kty == "RSA":
            algorithms, key = ["RS256", "RS384", "RS512", "PS256"], RSAAlgorithm.from_jwk(entry)
        elif kty == "EC" and entry.get("crv") in _JWK_CURVES:
            algorithms, key = [_JWK_CURVES[entry["crv"]]], ECAlgorithm.from_jwk(entry)
        elif kty == "OKP":
            algorithms, key = ["EdDSA"], OKPAlgorithm.from_jwk(entry)
        else:
            return None
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if hasattr(key, "private_bytes"):  # a private key published by mistake: not trusted
        return None
    alg = entry.get("alg")
    return key, ([alg] if alg in algorithms else algorithms)


class Tokens:
    """The edge's token verifier (`BUS_JWT_*`); `verify` answers a `Principal` or raises
    `InvalidToken`."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: Path | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = LEEWAY,
        cache_size: int = CACHE_SIZE,
        jwks_refresh: float = JWKS_REFRESH,
    ) -> None:
        if sum(x is not None for x in (secret, public_key, jwks_url)) != 1:
            raise ConfigError("BUS_JWT_*: set one of SECRET, PUBLIC_KEY or JWKS_URL")
        if secret is not None and len(secret) < 32:
            raise ConfigError("BUS_JWT_SECRET: at least 32 characters (HS256 needs 256 bits)")
        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        self.cache_size, self.jwks_refresh = cache_size, jwks_refresh
        self._static: tuple[Any, list[str]] | None = None
        if secret is not None:
            self._static = (secret, ["HS256"])
        elif public_key is not None:
            try:
                key = jwt.algorithms.get_default_algorithms()["RS256"].prepare_key(
                    public_key.read_bytes()
                )
            except (OSError, ValueError, jwt.InvalidKeyError) as exc:
                raise ConfigError(f"BUS_JWT_PUBLIC_KEY: not a public key ({exc})") from None
            if hasattr(key, "private_bytes"):
                raise ConfigError("BUS_JWT_PUBLIC_KEY: this is a private key")
            self._static = (key, _pem_algorithms(key))
        self.jwks_url = jwks_url
        self._jwks: dict[str, tuple[Any, list[str]]] = {}
        self._fetched_at = -float("inf")
        self._fetching = asyncio.Lock()
        # sha256(token) -> (who, exp + leeway): a digest, so no bearer token outlives its request
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    @staticmethod
    def looks_like(token: str) -> bool:
        """A JWT has three dot-separated parts; an API key has none."""
        return token.count(".") == 2

    def cached(self, token: str) -> Principal | None:
        """Who `token` is, if it was verified before and has not expired: the hot path's
        look-up (a digest and a dictionary get; no coroutine, no signature)."""
        if len(token) > MAX_TOKEN:
            return None
        found = self._cache.get(_digest(token))
        return found[0] if found is not None and found[1] > time.time() else None

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN:
            raise InvalidToken("the token is too long")
        if (known := self.cached(token)) is not None:
            return known
        now = time.time()
        key, algorithms = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        if not isinstance(claims.get("sub"), str) or not _SUB.fullmatch(claims["sub"]):
            raise InvalidToken("the token's sub is not a name (1-256 printable ASCII, no spaces)")
        principal = Principal(claims["sub"], scopes_of(claims.get("scope")))
        self._remember(_digest(token), principal, float(claims["exp"]) + self.leeway, now)
        return principal

    def _remember(self, digest: bytes, principal: Principal, until: float, now: float) -> None:
        if len(self._cache) >= self.cache_size:  # drop the expired, else the oldest
            for stale in [d for d, (_, e) in self._cache.items() if e <= now]:
                del self._cache[stale]
            while len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
        self._cache[digest] = (principal, until)

    async def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._static is not None:
            return self._static
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key (kid)")
        if kid not in self._jwks:
            await self._refresh()
        found = self._jwks.get(kid)
        if found is None:
            raise InvalidToken("the token's key (kid) is not known")
        return found

    async def _refresh(self) -> None:
        """Fetch the JWKS again, at most once per `jwks_refresh` seconds (an unknown kid
        must not make every request a fetch); a failed fetch keeps the keys we had."""
        async with self._fetching:
            if time.monotonic() - self._fetched_at < self.jwks_refresh:
                return
            self._fetched_at = time.monotonic()
            assert self.jwks_url is not None
            try:
                document = await _fetch(self.jwks_url)
            except (httpx.HTTPError, ValueError):
                return
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                return
            fresh = {}
            for entry in keys[:JWKS_MAX_KEYS]:
                if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                    continue
                if (parsed := _jwk(entry)) is not None:
                    fresh[entry["kid"]] = parsed
            self._jwks = fresh


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


async def _fetch(url: str) -> Any:
    """The JWKS document: within a timeout and a size bound."""
    async with (
        httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False) as client,
        client.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError("the JWKS is too large")
    return json.loads(body)


def scopes_of(claim: Any) -> frozenset[str]:
    """`bus:read bus:write` -> {read, write}; scopes that are not ours, or not well formed
    (`bus:read:>.x`), are ignored."""
    if not isinstance(claim, str):
        return frozenset()
    return frozenset(
        s[len(SCOPE_PREFIX) :]
        for s in claim.split()
        if s.startswith(SCOPE_PREFIX) and valid_scope(s[len(SCOPE_PREFIX) :])
    )
