"""API keys from `BUS_API_KEYS` (`key:read+write+admin,key2:read`), sent as bearer tokens.

Writes need `write`; reads need `read` unless the edge is told reads are public. With no
`BUS_API_KEYS`, the edge makes one development key with every scope and logs it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from fastapi import Request

from bus import ConfigError

from .problems import problem

SCOPES = frozenset({"read", "write", "admin"})


class Unauthorized(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def parse_keys(spec: str) -> dict[str, frozenset[str]]:
    keys: dict[str, frozenset[str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, scopes = item.partition(":")
        wanted = frozenset(filter(None, scopes.split("+")))
        if not key or not wanted or not wanted <= SCOPES:
            raise ConfigError(f"BUS_API_KEYS entry {item[:4]}…: want key:read+write+admin")
        keys[key] = wanted
    return keys


def dev_key() -> str:
    return secrets.token_urlsafe(24)


def require(scope: str) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if scope == "read" and request.app.state.public_reads:
            return
        keys: dict[str, frozenset[str]] = request.app.state.api_keys
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(401, "an API key is required (Authorization: Bearer <key>)")
        scopes = next((s for k, s in keys.items() if hmac.compare_digest(k, token)), None)
        if scopes is None:
            raise Unauthorized(401, "unknown API key")
        if scope not in scopes and "admin" not in scopes:
            raise Unauthorized(403, f"this key lacks the {scope!r} scope")

    return check


def install(app: object) -> None:
    @app.exception_handler(Unauthorized)  # type: ignore[attr-defined]
    async def unauthorized(request: Request, exc: Unauthorized):  # type: ignore[no-untyped-def]
        response = problem(
            exc.status, "Unauthorized" if exc.status == 401 else "Forbidden", exc.detail
        )
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
