"""Who is calling: API keys from `BUS_API_KEYS` (`key:read+write+admin@name,key2:read`) or
JWT bearer tokens (`BUS_JWT_*`, services/edge/tokens.py), both sent as bearer tokens. Every
surface (HTTP, SSE, WebSocket, MCP, the console) asks here.

Writes need `write`; reads need `read` unless the edge is told reads are public. With no
`BUS_API_KEYS`, the edge makes one development key with every scope and logs it.
"""

# (No `from __future__ import annotations`: FastAPI before 0.116 resolves a callable
# instance's string annotations against no globals, and took `request` for a query field.)
import contextlib
import hashlib
import hmac
import re
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from bus import ConfigError

from .grants import holds_any, valid_scope
from .problems import problem
from .tokens import InvalidToken, Principal, Tokens

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class Unauthorized(Exception):
    def __init__(self, status: int, detail: str, error: str | None = None) -> None:
        self.status, self.detail, self.error = status, detail, error


def parse_keys(spec: str) -> dict[str, Principal]:
    """Each key with its principal: the name after `@`, else `key-` and a digest of the key
    (so the key itself never lands in an event header)."""
    keys: dict[str, Principal] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, rest = item.partition(":")
        scopes, at, name = rest.partition("@")
        wanted = frozenset(filter(None, scopes.split("+")))
        if (
            not key
            or not wanted
            or not all(map(valid_scope, wanted))
            or (at and not _NAME.fullmatch(name))
        ):
            raise ConfigError(
                f"BUS_API_KEYS entry {item[:4]}…: want key:read+write+admin[+publish:<pattern>"
                "+read:<pattern>+request:<pattern>][@name]"
            )
        name = name or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        keys[key] = Principal(name, wanted)
    return keys


def dev_key() -> str:
    return secrets.token_urlsafe(24)


async def caller(state: State, authorization: str | None) -> Principal:
    """The principal behind an `Authorization: Bearer` header; 401 when absent or unknown."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(401, "an API key or token is required (Authorization: Bearer ...)")
    tokens: Tokens | None = state.tokens
    if tokens is not None and Tokens.looks_like(token):
        if (known := tokens.cached(token)) is not None:  # the hot path: no coroutine
            return known
        try:
            return await tokens.verify(token)
        except InvalidToken as exc:
            raise Unauthorized(401, exc.reason, "invalid_token") from None
    keys: dict[str, Principal] = state.api_keys
    found = next((p for k, p in keys.items() if hmac.compare_digest(k, token)), None)
    if found is None:
        raise Unauthorized(401, "unknown API key", "invalid_token")
    return found


async def caller_scopes(state: State, authorization: str | None) -> frozenset[str]:
    return (await caller(state, authorization)).scopes


def check_scope(scopes: frozenset[str], scope: str) -> None:
    if scope not in scopes and "admin" not in scopes:
        raise Unauthorized(403, f"this key or token lacks the {scope!r} scope")


class require:
    """A dependency checking the caller (async: FastAPI runs sync ones in a thread); its
    `scope` is what `/openapi.json` documents for each operation (services/edge/openapi.py).
    The principal it finds is `request.state.principal` (None on an anonymous public read).
    `narrowed` routes also let in callers holding patterns of `kinds` (by default the
    scope's own: publish for write, read for read), and check the names themselves
    (services/edge/grants.py, services/edge/permissions.py)."""

    def __init__(
        self, scope: str, *, narrowed: bool = False, kinds: tuple[str, ...] | None = None
    ) -> None:
        self.scope, self.narrowed = scope, narrowed
        self.kinds = kinds or (("publish",) if scope == "write" else ("read",))

    async def __call__(self, request: Request) -> None:
        request.state.principal = None
        authorization = request.headers.get("authorization")
        if self.scope == "read" and request.app.state.public_reads:
            if authorization:  # a key may still show it is admin
                with contextlib.suppress(Unauthorized):
                    request.state.principal = await caller(request.app.state, authorization)
            return
        principal = await caller(request.app.state, authorization)
        if not (self.narrowed and holds_any(principal.scopes, self.kinds)):
            check_scope(principal.scopes, self.scope)
        request.state.principal = principal


# Routes that check their callers themselves, not through `require`: what each needs (the
# auth matrix, tests/test_auth_matrix.py, holds every other route to a `require`).
SELF_CHECKED = {"/ws": "read", "/mcp": "read", "/api/v1/session": "any"}
# Routes open to anyone: probes, metrics, the documents describing the API, the console's files.
OPEN = frozenset(
    {
        "/livez",
        "/readyz",
        "/health",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/asyncapi.json",
        "/ui",
    }
)


def refusal(exc: Unauthorized) -> JSONResponse:
    response = problem(exc.status, "Unauthorized" if exc.status == 401 else "Forbidden", exc.detail)
    if exc.status == 401:
        error = f' error="{exc.error}", error_description="{exc.detail}"' if exc.error else ""
        response.headers["WWW-Authenticate"] = "Bearer" + error
    return response


def install(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return refusal(exc)
