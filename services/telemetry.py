"""A service's telemetry: OTLP traces when configured, JSON logs carrying trace ids, the bus's
observations recorded as Prometheus metrics, and `/metrics` for processes without the edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bus import Bus, telemetry
from bus.app import App
from bus.envelope import current_envelope
from bus.projection import ProjectionView
from bus.registry import components
from observability import logging as logs
from observability import metrics as m
from observability import tracing

INTERNAL = ("KV_", "OBJ_")  # KV buckets and object stores are streams too; not ours to chart
FINAL_SCRAPE_WAIT = 6.0  # seconds: deploy/prometheus scrapes every 5 s


def add_event_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The event being handled, on every log line written while handling it."""
    envelope = current_envelope.get()
    if envelope is not None:
        event.setdefault("event_id", envelope.id)
    return event


def setup(component: str, json_logs: bool = False) -> Callable[[], None]:
    """Logs, traces and metrics for this process; returns what flushes spans at exit."""
    logs.setup(component, extra=(add_event_id,), json=True if json_logs else None)
    for chatty in ("mcp", "httpx"):  # their per-session and per-request INFO lines are noise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    provider = tracing.setup(component)
    if not any(isinstance(o, m.Recorder) for o in telemetry.observers):
        telemetry.observers.append(m.Recorder())
    return provider.shutdown if provider is not None else lambda: None


async def refresh(bus: Bus, app: App) -> None:
    """Set the gauges from what JetStream, the projections and the registry say now."""
    for gauge in (m.CONSUMER_PENDING, m.CONSUMER_ACK_PENDING, m.CONSUMER_REDELIVERED):
        gauge.clear()  # a deleted consumer must not linger at its last value
    last_seq: dict[str, int] = {}
    for stream in await bus.streams.list():
        if stream.name.startswith(INTERNAL):
            continue
        last_seq[stream.name] = stream.last_seq
        if stream.name.startswith("DLQ_"):
            m.DLQ_MESSAGES.labels(stream.name.removeprefix("DLQ_")).set(stream.messages)
            continue
        m.STREAM_MESSAGES.labels(stream.name).set(stream.messages)
        for info in await bus.js.consumers_info(stream.name):
            if not info.config.durable_name:  # ephemeral names are random: unbounded labels
                continue
            labels = (stream.name, info.name)
            m.CONSUMER_PENDING.labels(*labels).set(info.num_pending or 0)
            m.CONSUMER_ACK_PENDING.labels(*labels).set(info.num_ack_pending or 0)
            m.CONSUMER_REDELIVERED.labels(*labels).set(info.num_redelivered or 0)
    for projection in app.projections.values():
        status = await ProjectionView(bus, projection).status()
        m.PROJECTION_POSITION.labels(projection.name).set(status.position)
        m.PROJECTION_LAG.labels(projection.name).set(status.lag)
        m.PROJECTION_FAILURES.labels(projection.name).set(status.failures)
        total = last_seq.get(status.stream, 0)
        progress = status.rebuild_position / total if status.rebuilding and total else 0.0
        m.REBUILD_PROGRESS.labels(projection.name).set(progress)
    m.COMPONENTS_ALIVE.clear()
    for name, count in Counter(c.name for c in await components(bus)).items():
        m.COMPONENTS_ALIVE.labels(name).set(count)


async def exposition(bus: Bus, app: App, accept: str | None) -> Response:
    """The `/metrics` answer: gauges refreshed (when NATS is there), then rendered."""
    if bus.connected:
        await refresh(bus, app)
    body, content_type = m.render(accept)
    return Response(body, media_type=content_type)


@contextlib.asynccontextmanager
async def serve_metrics(bus: Bus, app: App, host: str, port: int | None) -> AsyncIterator[None]:
    """`/metrics` on host:port for the projector and worker (None: not served).

    Enter it before the Bus and leave it after: what handlers finishing during the drain
    count is still served. Prometheus pulls, so on the way out the counters wait for one
    more scrape (up to FINAL_SCRAPE_WAIT) rather than vanish with the process.
    """
    if port is None:
        yield
        return
    from .edge.server import start_edge, stop_edge

    scraped = asyncio.Event()

    async def scrape(request: Request) -> Response:
        response = await exposition(bus, app, request.headers.get("accept"))
        scraped.set()  # in the same step as the rendering: it saw every count made before
        return response

    server, task, _ = await start_edge(Starlette(routes=[Route("/metrics", scrape)]), host, port)
    try:
        yield
        scraped.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_SCRAPE_WAIT):
                await scraped.wait()
    finally:
        await stop_edge(server, task)
