"""`GET /metrics` (an explicit route: a mounted app would answer with a 307) and the HTTP
duration of every request by route template. JetStream-derived gauges are read at scrape time
(services/runtime/telemetry.py)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.metrics import Metrics
from services.runtime.telemetry import exposition

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition; OpenMetrics (with exemplars) when the scraper asks for it."""
    state = request.app.state
    return await exposition(state.bus, state.app, state.metrics, request.headers.get("accept"))


class HttpMetrics:
    """Records `http_server_request_duration_seconds` by route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

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
            self.metrics.http_duration.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - started
            )
