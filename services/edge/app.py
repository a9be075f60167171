"""The edge app factory: `create_app(app, nats_url)`; the Bus lives in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bus import (
    App,
    Bus,
    CircuitPolicy,
    Circuits,
    Credentials,
    IdempotencyRecords,
    LiveView,
    Protection,
)
from observability import tracing
from observability.metrics import Metrics

from . import (
    asyncapi,
    auth,
    catalogue,
    console,
    deadletters,
    events,
    fastpath,
    health,
    kv,
    limits,
    mcp_endpoint,
    monitor,
    openapi,
    problems,
    projections,
    rebuilds,
    requests,
    tail,
    workflows,
)
from . import metrics as http_metrics
from .tokens import Tokens

log = logging.getLogger("bus.edge")
BODY_LIMIT = 1024 * 1024
LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
PUBLISH_RATE = 1000.0
CORS_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "Last-Event-ID",
    "Mcp-Session-Id",
    "Mcp-Protocol-Version",
    "traceparent",
    "tracestate",
]
LOCAL_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def create_app(
    app: App,
    nats_url: str,
    *,
    credentials: Credentials | None = None,
    api_keys: str | None = None,
    public_reads: bool = False,
    body_limit: int = BODY_LIMIT,
    allowed_hosts: list[str] | None = None,
    cors_origins: list[str] | None = None,
    publish_rate: float = PUBLISH_RATE,
    slow_client_timeout: float = 10.0,
    idempotency_ttl: float = IdempotencyRecords.DEFAULT_TTL,
    replicas: int = 1,
    metrics: Metrics | None = None,
    circuits: Circuits | CircuitPolicy | None = None,
    health_interval: float = monitor.INTERVAL,
    health_timeout: float = monitor.TIMEOUT,
    protection: Protection | None = None,
    grafana_url: str | None = None,
    tokens: Tokens | None = None,
) -> FastAPI:
    """The edge for `app`.

    `allowed_hosts` guard `/mcp` against DNS rebinding; `cors_origins` may call from browsers
    (keys travel as bearer headers, never cookies, so no credentials mode); `publish_rate` is
    events per second per key (0: unlimited); a WebSocket tail client that reads nothing for
    `slow_client_timeout` seconds is disconnected; an `Idempotency-Key` is kept for
    `idempotency_ttl` seconds; `replicas` is that of the KV buckets the edge creates;
    `metrics` is where it counts (its own unless the process shares one, as `bus up` does);
    every `health_interval` seconds (0: never) it checks the registered components, each
    within `health_timeout` seconds (services/edge/monitor.py); `circuits` guard its requests
    (a policy, or a table the process shares); the console at `/ui` links trace ids to
    `grafana_url`; `tokens` verifies JWT bearer tokens."""
    metrics = metrics if metrics is not None else Metrics()
    keys = auth.parse_keys(api_keys or "")
    if not keys:
        key = auth.dev_key()
        keys = auth.parse_keys(f"{key}:read+write+admin@dev")
        log.warning("BUS_API_KEYS is not set: a development key with every scope is in use")
    dev_key = next(iter(keys)) if not api_keys else None

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with (
            Bus(
                nats_url,
                name=f"edge-{app.name}",
                registry=app.registry,
                credentials=credentials,
                replicas=replicas,
                buckets=[*app.buckets.values(), *([limits.RATES] if publish_rate else [])],
                observer=metrics,
                circuits=circuits,
                protection=protection,  # the edge reads plaintext, publishes sealed
            ) as bus,
            contextlib.AsyncExitStack() as views,
            api.state.mcp_manager.run(),
        ):
            api.state.bus = bus
            if publish_rate:
                api.state.publish_buckets.bucket = bus.bucket(limits.RATES.name)
            api.state.idempotency = IdempotencyRecords(bus, ttl=idempotency_ttl)
            api.state.monitor = None
            if health_interval > 0:
                watching = monitor.HealthMonitor(
                    bus, metrics, interval=health_interval, timeout=health_timeout
                )
                api.state.monitor = await views.enter_async_context(watching)
            api.state.views = {
                name: await views.enter_async_context(LiveView(bus, projection))
                for name, projection in app.projections.items()
            }
            yield

    api = FastAPI(title=f"bus edge · {app.name}", lifespan=lifespan, responses=problems.RESPONSES)
    api.state.app = app
    api.state.api_keys = keys
    api.state.dev_key = dev_key  # shown by `bus up` when no keys were configured
    api.state.public_reads = public_reads
    api.state.body_limit = body_limit
    api.state.tokens = tokens
    api.state.publish_buckets = limits.PublishLimits(publish_rate)
    api.state.slow_client_timeout = slow_client_timeout
    problems.install(api)
    auth.install(api)
    origins = cors_origins or []
    if origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=CORS_HEADERS,
            expose_headers=[
                "Bus-Stale",
                "Retry-After",
                "Mcp-Session-Id",
                "Location",
                "Idempotent-Replayed",
                "ETag",
            ],
        )
    api.add_middleware(fastpath.HotReads, state=api.state)  # inside the metrics
    api.state.metrics = metrics
    api.add_middleware(http_metrics.HttpMetrics, metrics=metrics)
    api.include_router(rebuilds.router)  # before projections' /{name}, which would take it
    routers = (health, http_metrics, events, projections, catalogue, asyncapi, tail, kv, requests)
    for module in (*routers, workflows):
        api.include_router(module.router)
    api.include_router(deadletters.router)
    console.install(api, grafana_url)
    mcp_endpoint.install(api, allowed_hosts or LOCAL_HOSTS, [*LOCAL_ORIGINS, *origins])
    openapi.install(api)
    tracing.instrument(api)
    return api
