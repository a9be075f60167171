"""What the bus reports about its work: spans (OpenTelemetry API) and metric observations.

Both are off until a process turns them on: tracing when an SDK tracer provider is installed
(observability.tracing does it from the `OTEL_*` variables), metrics when an observer is
registered in `observers` (the services register observability.metrics' recorder). Off, a
hook costs one check. Span names and attributes follow the OpenTelemetry messaging
conventions (OBSERVABILITY.md): `publish <subject template>` (PRODUCER, its context injected
into the headers) and `process <consumer>` (CONSUMER, a child of the producer context and
linked to it; batches link to every message instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, StatusCode

SYSTEM = "nats"


class Observer(Protocol):
    """Receives metric observations; labels are bounded (streams, consumers, outcomes)."""

    def published(self, destination: str, outcome: str, seconds: float, count: int) -> None: ...

    def processed(self, consumer: str, outcome: str, seconds: float, count: int) -> None: ...

    def dead_lettered(self, stream: str, consumer: str) -> None: ...


observers: list[Observer] = []
_tracer: tuple[Any, trace.Tracer | None] = (None, None)  # (provider, its tracer)


def tracer() -> trace.Tracer | None:
    """Our tracer, or None while no SDK tracer provider is installed (tracing is off)."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer[0] is not provider:
        off = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        _tracer = (provider, None if off else provider.get_tracer("bus"))
    return _tracer[1]


def start_publish(template: str, event_id: str, headers: dict[str, str], size: int) -> Span | None:
    """A PRODUCER span for one event, its context written into `headers`; None when off."""
    tracing = tracer()
    if tracing is None:
        return None
    span = tracing.start_span(
        f"publish {template}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.destination.name": template,
            "messaging.message.id": event_id,
            "messaging.message.body.size": size,
        },
    )
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return span


def end_publish(
    span: Span, stream: str = "", seq: int = 0, error: BaseException | None = None
) -> None:
    if error is not None:
        failed(span, error)
    else:
        span.set_attribute("messaging.nats.stream", stream)
        span.set_attribute("messaging.nats.sequence", seq)
    span.end()


@contextlib.contextmanager
def processing(
    consumer: str, stream: str, headers: Iterable[Mapping[str, str]], subject: str = ""
) -> Iterator[Span | None]:
    """A CONSUMER span around handling messages, current while it runs; None when off.

    A child of the (first) message's producer context, and linked to every message's: Tempo
    draws the producer -> consumer edge only for parent-child, and the links keep a batch's
    other messages one click away.
    """
    tracing = tracer()
    if tracing is None:
        yield None
        return
    contexts = [propagate.extract(h) for h in headers]
    spans = [trace.get_current_span(c).get_span_context() for c in contexts]
    links = [Link(s) for s in spans if s.is_valid]
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": consumer,
        "messaging.nats.stream": stream,
    }
    if len(contexts) > 1:
        attributes["messaging.batch.message_count"] = len(contexts)
    elif subject:
        attributes["messaging.destination.name"] = subject
    with tracing.start_as_current_span(
        f"process {consumer}",
        context=contexts[0] if contexts else None,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[Span | None]:
    """An INTERNAL span for work worth seeing in a trace (KV writes, rebuilds); None when off."""
    tracing = tracer()
    if tracing is None:
        yield None
        return
    with tracing.start_as_current_span(name, attributes=attributes) as span:
        yield span


def failed(span: Span | None, error: BaseException) -> None:
    if span is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(StatusCode.ERROR, str(error)[:200])


def dead_lettered(stream: str, consumer: str, reason: str) -> None:
    """Recorded on the current span (the message's `process` span) and counted."""
    if tracer() is not None:
        trace.get_current_span().add_event(
            "dead_letter", {"bus.dlq.reason": reason[:500], "bus.dlq.stream": stream}
        )
    for observer in observers:
        observer.dead_lettered(stream, consumer)


def published(destination: str, outcome: str, seconds: float, count: int = 1) -> None:
    for observer in observers:
        observer.published(destination, outcome, seconds, count)


def processed(consumer: str, outcome: str, seconds: float, count: int = 1) -> None:
    for observer in observers:
        observer.processed(consumer, outcome, seconds, count)
