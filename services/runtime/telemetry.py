"""A service's telemetry: OTLP traces and logs when configured, JSON logs carrying trace ids,
the bus's observations recorded as Prometheus metrics, and the `/metrics` answer (served by
the edge, and by `services.runtime.probes` for the worker and projector)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from bus import App, Bus, ProjectionView, components, current_envelope
from observability import logging as logs
from observability import tracing
from observability.metrics import Metrics

INTERNAL = ("KV_", "OBJ_")  # KV buckets and object stores are streams too; not ours to chart


def add_event_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The event being handled, on every log line written while handling it."""
    envelope = current_envelope.get()
    if envelope is not None:
        event.setdefault("event_id", envelope.id)
    return event


@dataclass(frozen=True)
class Instruments:
    """What a service reports through: its metrics (the Bus's observer, and what `/metrics`
    renders) and what flushes its spans and logs at exit."""

    metrics: Metrics
    flush: Callable[[], None]


def setup(component: str, json_logs: bool = False) -> Instruments:
    """Logs, traces and metrics for this process (set up before its Bus starts)."""
    exporting = logs.setup(component, extra=(add_event_id,), json=True if json_logs else None)
    for chatty in ("mcp", "httpx"):  # their per-session and per-request INFO lines are noise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    providers = [p for p in (tracing.setup(component), exporting) if p is not None]

    def flush() -> None:  # spans first: their export may still log
        for provider in providers:
            provider.shutdown()

    return Instruments(Metrics(), flush)


async def refresh(bus: Bus, app: App, m: Metrics) -> None:
    """Set the gauges from what JetStream, the projections and the registry say now."""
    for gauge in (m.consumer_pending, m.consumer_ack_pending, m.consumer_redelivered):
        gauge.clear()  # a deleted consumer must not linger at its last value
    last_seq: dict[str, int] = {}
    for stream in await bus.streams.list():
        if stream.name.startswith(INTERNAL):
            continue
        last_seq[stream.name] = stream.last_seq
        if stream.name.startswith("DLQ_"):
            m.dlq_messages.labels(stream.name.removeprefix("DLQ_")).set(stream.messages)
            continue
        m.stream_messages.labels(stream.name).set(stream.messages)
        for consumer in await bus.streams.consumers(stream.name):
            if not consumer.durable:  # ephemeral names are random: unbounded labels
                continue
            labels = (stream.name, consumer.name)
            m.consumer_pending.labels(*labels).set(consumer.pending)
            m.consumer_ack_pending.labels(*labels).set(consumer.ack_pending)
            m.consumer_redelivered.labels(*labels).set(consumer.redelivered)
    for projection in app.projections.values():
        status = await ProjectionView(bus, projection).status()
        m.projection_position.labels(projection.name).set(status.position)
        m.projection_lag.labels(projection.name).set(status.lag)
        m.projection_failures.labels(projection.name).set(status.failures)
        total = last_seq.get(status.stream, 0)
        progress = status.rebuild_position / total if status.rebuilding and total else 0.0
        m.rebuild_progress.labels(projection.name).set(progress)
    m.components_alive.clear()
    for name, count in Counter(c.name for c in await components(bus)).items():
        m.components_alive.labels(name).set(count)


async def exposition(bus: Bus, app: App, metrics: Metrics, accept: str | None) -> Response:
    """The `/metrics` answer: gauges refreshed (when NATS is there), then rendered."""
    if bus.connected:
        await refresh(bus, app, metrics)
    body, content_type = metrics.render(accept)
    return Response(body, media_type=content_type)
