"""The console at `/ui`: static HTML, CSS and ES modules of our own, shipped as package data
and served with a strict Content-Security-Policy. The page calls the same `/api/v1` routes
as every client; `GET /api/v1/session` tells it what the caller's key may do.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import session

STATIC = Path(__file__).parent / "static"
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class Secured:
    """Adds the console's security headers to every response of the app it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_secured)


def install(api: FastAPI, grafana_url: str | None = None) -> None:
    """Serve the console at `/ui` and its session route; traces link to `grafana_url`."""
    api.state.grafana_url = grafana_url or None
    api.include_router(session.router)
    api.mount("/ui", Secured(StaticFiles(directory=STATIC, html=True)), name="console")
