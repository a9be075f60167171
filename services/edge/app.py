"""The edge app factory: `create_app(app, nats_url)`; the Bus lives in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bus import Bus
from bus.app import App

from . import auth, catalogue, events, health, mcp_endpoint, problems, projections, tail

log = logging.getLogger("bus.edge")
BODY_LIMIT = 1024 * 1024
LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOCAL_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def create_app(
    app: App,
    nats_url: str,
    *,
    api_keys: str | None = None,
    public_reads: bool = False,
    body_limit: int = BODY_LIMIT,
    allowed_hosts: list[str] | None = None,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """The edge for `app`; `allowed_hosts` guard `/mcp` against DNS rebinding."""
    keys = auth.parse_keys(api_keys or "")
    if not keys:
        key = auth.dev_key()
        keys = {key: auth.SCOPES}
        log.warning("BUS_API_KEYS is not set: a development key with every scope is in use")
    dev_key = next(iter(keys)) if not api_keys else None

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with (
            Bus(nats_url, name=f"edge-{app.name}", registry=app.registry) as bus,
            api.state.mcp_manager.run(),
        ):
            api.state.bus = bus
            yield

    api = FastAPI(title=f"bus edge · {app.name}", lifespan=lifespan)
    api.state.app = app
    api.state.api_keys = keys
    api.state.dev_key = dev_key  # shown by `bus up` when no keys were configured
    api.state.public_reads = public_reads
    api.state.body_limit = body_limit
    problems.install(api)
    auth.install(api)
    for module in (health, events, projections, catalogue, tail):
        api.include_router(module.router)
    origins = cors_origins or []
    mcp_endpoint.install(api, allowed_hosts or LOCAL_HOSTS, [*LOCAL_ORIGINS, *origins])
    return api
