"""`GET /metrics` (an explicit route: a mounted app would answer with a 307) and the HTTP
duration of every request by route template. JetStream-derived gauges are read at scrape time."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import Bus
from bus.app import App
from bus.projection import ProjectionView
from bus.registry import components
from observability import metrics as m

router = APIRouter(tags=["health"])
INTERNAL = ("KV_", "OBJ_")  # KV buckets and object stores are streams too; not ours to chart


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


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition; OpenMetrics (with exemplars) when the scraper asks for it."""
    state = request.app.state
    if state.bus.connected:
        await refresh(state.bus, state.app)
    body, content_type = m.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


class HttpMetrics:
    """Records `http_server_request_duration_seconds` by route template, never the raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            m.HTTP_DURATION.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - started
            )
