"""The edge app factory: `create_app(app, nats_url)`; the Bus lives in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bus import Bus
from bus.app import App

from . import auth, catalogue, events, health, problems, projections, tail

log = logging.getLogger("bus.edge")
BODY_LIMIT = 1024 * 1024


def create_app(
    app: App,
    nats_url: str,
    *,
    api_keys: str | None = None,
    public_reads: bool = False,
    body_limit: int = BODY_LIMIT,
) -> FastAPI:
    keys = auth.parse_keys(api_keys or "")
    if not keys:
        key = auth.dev_key()
        keys = {key: auth.SCOPES}
        log.warning("BUS_API_KEYS is not set: a development key with every scope is in use")
    dev_key = next(iter(keys)) if not api_keys else None

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with Bus(nats_url, name=f"edge-{app.name}", registry=app.registry) as bus:
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
    return api
