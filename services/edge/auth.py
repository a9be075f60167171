"""API keys from `BUS_API_KEYS` (`key:read+write+admin,key2:read`), sent as bearer tokens.

Writes need `write`; reads need `read` unless the edge is told reads are public. With no
`BUS_API_KEYS`, the edge makes one development key with every scope and logs it.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import State

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


def caller_scopes(state: State, authorization: str | None) -> frozenset[str]:
    """The scopes of the key in an `Authorization: Bearer` header; 401 when absent or unknown."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(401, "an API key is required (Authorization: Bearer <key>)")
    keys: dict[str, frozenset[str]] = state.api_keys
    scopes = next((s for k, s in keys.items() if hmac.compare_digest(k, token)), None)
    if scopes is None:
        raise Unauthorized(401, "unknown API key")
    return scopes


def check_scope(scopes: frozenset[str], scope: str) -> None:
    if scope not in scopes and "admin" not in scopes:
        raise Unauthorized(403, f"this key lacks the {scope!r} scope")


class require:
    """A dependency checking the caller's key (async: FastAPI runs sync ones in a thread); its
    `scope` is what `/openapi.json` documents for each operation (services/edge/openapi.py)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> None:
        if self.scope == "read" and request.app.state.public_reads:
            return
        check_scope(
            caller_scopes(request.app.state, request.headers.get("authorization")), self.scope
        )


def refusal(exc: Unauthorized) -> JSONResponse:
    response = problem(exc.status, "Unauthorized" if exc.status == 401 else "Forbidden", exc.detail)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def install(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return refusal(exc)
