"""A service's telemetry: OTLP traces when configured, JSON logs carrying trace ids, the bus's
observations recorded as Prometheus metrics, and the `/metrics` answer (served by the edge,
and by `services.probes` for the worker and projector)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from bus import Bus, telemetry
from bus.app import App
from bus.envelope import current_envelope
from bus.projection import ProjectionView
from bus.registry import components
from observability import logging as logs
from observability import metrics as m
from observability import tracing

INTERNAL = ("KV_", "OBJ_")  # KV buckets and object stores are streams too; not ours to chart


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
