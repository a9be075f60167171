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
import contextvars
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
)

SYSTEM = "nats"


class Observer(Protocol):
    """Receives metric observations; labels are bounded (streams, consumers, outcomes)."""

    def published(self, destination: str, outcome: str, seconds: float, count: int) -> None: ...

    def processed(self, consumer: str, outcome: str, seconds: float, count: int) -> None: ...

    def dead_lettered(self, stream: str, consumer: str) -> None: ...


observers: list[Observer] = []
_tracer: tuple[Any, trace.Tracer | None] = (None, None)  # (provider, its tracer)
# With a parent-based sampler (the SDK's default) a child of an unsampled span is dropped
# anyway: the bus then skips the SDK and only passes the unsampled context on. At 10%
# sampling that is nine messages in ten, and it is most of what tracing costs.
_parent_decides = False


def tracer() -> trace.Tracer | None:
    """Our tracer, or None while no SDK tracer provider is installed (tracing is off).

    Reads the API's global directly: `trace.get_tracer_provider()` looks the environment up
    on every call until a provider is set, which is most of what an off hook would cost."""
    global _tracer, _parent_decides
    provider = trace._TRACER_PROVIDER  # set once, by trace.set_tracer_provider
    if provider is None:
        return None
    if _tracer[0] is not provider:
        off = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        _tracer = (provider, None if off else provider.get_tracer("bus"))
        sampler = type(getattr(provider, "sampler", None))
        _parent_decides = any(c.__name__ == "ParentBased" for c in sampler.__mro__)
    return _tracer[1]


# The unsampled trace a message being handled belongs to: its `traceparent`, passed on by
# what the handler publishes. A plain context variable: no span, no OpenTelemetry context.
_unsampled_parent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bus_unsampled_parent", default=None
)


def _is_unsampled(traceparent: str | None) -> bool:
    """`00-<trace>-<span>-<flags>` with the sampled bit of the flags clear."""
    if not traceparent or len(traceparent) != 55:
        return False
    return traceparent[-1] in "02468ace"


def enter_unsampled(headers: Mapping[str, str]) -> contextvars.Token[str | None] | None:
    """Handle a message of an unsampled trace without a span (a parent-based sampler would
    drop it anyway); returns the token to `leave_unsampled`, or None: make a span."""
    if not _parent_decides:
        return None
    parent = headers.get("traceparent")
    return _unsampled_parent.set(parent) if _is_unsampled(parent) else None


def leave_unsampled(token: contextvars.Token[str | None]) -> None:
    _unsampled_parent.reset(token)


def _passed_on() -> str | None:
    """The traceparent to pass on unsampled, if the current work is not sampled."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return None if current.trace_flags.sampled else _traceparent(current)
    return _unsampled_parent.get()


def _traceparent(context: SpanContext) -> str:
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def start_publish(template: str, event_id: str, headers: dict[str, str], size: int) -> Span | None:
    """A PRODUCER span for one event, its context written into `headers`; None when off.

    An unsampled context travels as a bare `traceparent` (what the next hop needs to drop
    its span too), without the SDK's per-message propagation machinery."""
    tracing = tracer()
    if tracing is None:
        return None
    if _parent_decides and (parent := _passed_on()):
        headers["traceparent"] = parent
        return None
    span = tracing.start_span(
        f"publish {template}", kind=SpanKind.PRODUCER, attributes=_publish_attributes(template)
    )
    if not span.is_recording():
        headers["traceparent"] = _traceparent(span.get_span_context())
        return None
    span.set_attributes({"messaging.message.id": event_id, "messaging.message.body.size": size})
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return span


@contextlib.contextmanager
def publishing_batch(template: str, count: int) -> Iterator[dict[str, str] | None]:
    """One PRODUCER span for a pipelined batch (the conventions' batch "send"), its context
    for every message of it: the headers to add to each, or None when tracing is off."""
    tracing = tracer()
    if tracing is None:
        yield None
        return
    if _parent_decides and (parent := _passed_on()):
        yield {"traceparent": parent}
        return
    attributes = {**_publish_attributes(template), "messaging.batch.message_count": count}
    span = tracing.start_span(f"publish {template}", kind=SpanKind.PRODUCER, attributes=attributes)
    headers: dict[str, str] = {}
    if span.is_recording():
        propagate.inject(headers, context=trace.set_span_in_context(span))
    else:
        headers["traceparent"] = _traceparent(span.get_span_context())
    try:
        yield headers
    except BaseException as exc:
        failed(span, exc)
        raise
    finally:
        span.end()


@functools.lru_cache(maxsize=1024)
def _publish_attributes(template: str) -> dict[str, Any]:
    """What samplers see at creation; the same for every event of a type (so made once)."""
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": template,
    }


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
    headers = list(headers)
    token = enter_unsampled(headers[0]) if headers else None
    if token is not None:
        try:
            yield None
        finally:
            leave_unsampled(token)
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
