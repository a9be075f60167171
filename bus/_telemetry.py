"""What a Bus reports about its work: spans (OpenTelemetry API) and metric observations.

Each Bus has a `Telemetry`: its tracer, from the tracer provider it was given or else the
API's global one when it starts (an SDK's, installed by observability.tracing from the
`OTEL_*` variables; none installed: tracing is off), and the metrics observer it was given
(observability.metrics' recorder in the services; none: no metrics). Off, a hook costs one
check, and a publish passes on the trace context of the work it is part of (a request's
`traceparent`, a handled message's), so that a traced component downstream continues the
caller's trace, as the OpenTelemetry API does with no SDK. Span names and attributes follow
the OpenTelemetry messaging conventions (OBSERVABILITY.md): `publish <subject template>`
(PRODUCER, its context injected into the headers) and `process <consumer>` (CONSUMER, a
child of the producer context and linked to it; batches link to every message instead); for
request/reply, `request <endpoint>` (CLIENT) and the responder's `process <endpoint>`
(SERVER, its child).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry import context, trace
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    StatusCode,
    TracerProvider,
)

from ._trace_context import (
    Continuing,
    Unsampled,
    carried,
    extract,
    inject,
    passed_on,
    traceparent_of,
    unsampled,
    unsampled_parent,
)

SYSTEM = "nats"


class Observer(Protocol):
    """Receives metric observations; labels are bounded (streams, consumers, outcomes)."""

    def published(self, destination: str, outcome: str, seconds: float, count: int) -> None: ...

    def processed(self, consumer: str, outcome: str, seconds: float, count: int) -> None: ...

    def dead_lettered(self, stream: str, consumer: str) -> None: ...

    def requested(self, endpoint: str, outcome: str, seconds: float) -> None: ...

    def served(self, service: str, endpoint: str, outcome: str, seconds: float) -> None: ...

    def circuit_changed(self, endpoint: str, state: str) -> None: ...


@functools.lru_cache(maxsize=1024)
def _publish_attributes(template: str) -> tuple[str, dict[str, Any]]:
    """The span name, and what samplers see at creation; the same for every event of a type
    (so made once)."""
    return f"publish {template}", {
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
        span.set_attributes({"messaging.nats.stream": stream, "messaging.nats.sequence": seq})
    span.end()


@functools.lru_cache(maxsize=1024)
def _request_attributes(endpoint: str) -> tuple[str, dict[str, Any]]:
    return f"request {endpoint}", {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "request",
        "messaging.operation.type": "send",
        "messaging.destination.name": endpoint,
    }


@functools.lru_cache(maxsize=256)
def _serve_attributes(service: str, endpoint: str) -> tuple[str, dict[str, Any]]:
    return f"process {endpoint}", {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": endpoint,
        "rpc.service": service,
        "rpc.method": endpoint,
    }


def _pass_on(headers: dict[str, str]) -> None:
    """With tracing off: the caller's context, if any, passed on as it came (see `carried`)."""
    if (context_in := carried()) is not None:
        headers.update(context_in)


def _sent(span: Span, headers: dict[str, str]) -> Span | None:
    """The span's context written into `headers`; the span, or None if it records nothing
    (an unsampled context travels as a bare `traceparent`)."""
    if span.is_recording():
        inject(headers, span)
        return span
    headers["traceparent"] = traceparent_of(span.get_span_context())
    return None


@functools.lru_cache(maxsize=256)
def _process_attributes(consumer: str, stream: str) -> tuple[str, dict[str, Any]]:
    """The span name and the attributes every message of a consumer shares (made once)."""
    return f"process {consumer}", {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": consumer,
        "messaging.nats.stream": stream,
    }


class _Current:
    """The span current while the block runs, ended after it: `start_as_current_span`
    without its layers of generators (a sampled message's span is on the hot path)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self.token)
        self.span.end()


_OFF = contextlib.nullcontext()


def failed(span: Span | None, error: BaseException) -> None:
    if span is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(StatusCode.ERROR, str(error)[:200])


class Telemetry:
    """A Bus's spans and metric observations: its tracer (None: tracing is off) and its
    observer (None: no metrics)."""

    __slots__ = ("observer", "parent_decides", "tracer")

    def __init__(
        self, tracer_provider: TracerProvider | None = None, observer: Observer | None = None
    ) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        off = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        self.tracer = None if off else provider.get_tracer("bus")
        # With a parent-based sampler (the SDK's default) a child of an unsampled span is
        # dropped anyway: the bus then skips the SDK and only passes the unsampled context
        # on. At 10% sampling that is nine messages in ten, and most of what tracing costs.
        sampler = type(getattr(provider, "sampler", None))
        self.parent_decides = any(c.__name__ == "ParentBased" for c in sampler.__mro__)
        self.observer = observer

    def continuing(self, carrier: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
        """Events published inside the block carry the trace context of `carrier` (the
        headers of a request being served) while tracing is off. With tracing on, the
        request's own span (the FastAPI instrumentation's) is their parent instead, and this
        does nothing."""
        return _OFF if self.tracer is not None else Continuing(carrier)

    def enter_unsampled(self, headers: Mapping[str, str]) -> contextvars.Token[str | None] | None:
        """Handle a message of an unsampled trace without a span (a parent-based sampler
        would drop it anyway); returns the token to `leave_unsampled`, or None: make a span."""
        parent = unsampled(headers) if self.parent_decides else None
        return None if parent is None else unsampled_parent.set(parent)

    def start_publish(
        self, template: str, event_id: str, headers: dict[str, str], size: int
    ) -> Span | None:
        """A PRODUCER span for one event, its context written into `headers`; None when off
        (then the caller's context, if any, is passed on as it came: see `_carried`).

        An unsampled context travels as a bare `traceparent` (what the next hop needs to
        drop its span too), without the SDK's per-message propagation machinery."""
        tracer = self.tracer
        if tracer is None:
            _pass_on(headers)
            return None
        if self._unsampled(headers):
            return None
        name, attributes = _publish_attributes(template)
        span = tracer.start_span(
            name,
            kind=SpanKind.PRODUCER,
            attributes={
                **attributes,
                "messaging.message.id": event_id,
                "messaging.message.body.size": size,
            },
        )
        return _sent(span, headers)

    def start_request(self, endpoint: str, headers: dict[str, str]) -> Span | None:
        """A CLIENT span `request <endpoint>` for a request, its context written into
        `headers`, as `start_publish` does; None when off."""
        tracer = self.tracer
        if tracer is None:
            _pass_on(headers)
            return None
        if self._unsampled(headers):
            return None
        name, attributes = _request_attributes(endpoint)
        return _sent(tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes), headers)

    def serving(
        self, service: str, endpoint: str, headers: Mapping[str, str]
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A SERVER span `process <endpoint>` around answering a request, a child of the
        caller's context in its headers and current while it runs; None when off (then what
        the responder publishes carries the caller's context on)."""
        tracer = self.tracer
        if tracer is None:
            return Continuing(headers)
        parent = unsampled(headers) if self.parent_decides else None
        if parent is not None:
            return Unsampled(parent)
        name, attributes = _serve_attributes(service, endpoint)
        span = tracer.start_span(
            name, context=extract(headers)[0], kind=SpanKind.SERVER, attributes=attributes
        )
        return _Current(span)

    def _unsampled(self, headers: dict[str, str]) -> bool:
        """Whether the current work is of a trace a parent-based sampler dropped: then its
        traceparent is written into `headers` as it is, and no span made."""
        if self.parent_decides and (parent := passed_on()):
            headers["traceparent"] = parent
            return True
        return False

    @contextlib.contextmanager
    def publishing_batch(self, template: str, count: int) -> Iterator[dict[str, str] | None]:
        """One PRODUCER span for a pipelined batch (the conventions' batch "send"), its
        context for every message of it: the headers to add to each; when tracing is off,
        the caller's context passed on (or None: nothing to add)."""
        tracer = self.tracer
        if tracer is None:
            yield carried()
            return
        if self.parent_decides and (parent := passed_on()):
            yield {"traceparent": parent}
            return
        name, attributes = _publish_attributes(template)
        attributes = {**attributes, "messaging.batch.message_count": count}
        span = tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        headers: dict[str, str] = {}
        if span.is_recording():
            inject(headers, span)
        else:
            headers["traceparent"] = traceparent_of(span.get_span_context())
        try:
            yield headers
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            span.end()

    def processing(
        self,
        consumer: str,
        stream: str,
        headers: Iterable[Mapping[str, str]],
        subject: str = "",
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A CONSUMER span around handling messages, current while it runs; None when off.
        Use it in a `with` at once: the span starts here.

        A child of the (first) message's producer context, and linked to every message's:
        Tempo draws the producer -> consumer edge only for parent-child, and the links keep
        a batch's other messages one click away.
        """
        tracer = self.tracer
        if tracer is None:
            return _OFF
        headers = list(headers)
        parent = unsampled(headers[0]) if headers and self.parent_decides else None
        if parent is not None:
            return Unsampled(parent)
        producers = [extract(h) for h in headers]
        name, attributes = _process_attributes(consumer, stream)
        if len(producers) > 1:
            attributes = {**attributes, "messaging.batch.message_count": len(producers)}
        elif subject:
            attributes = {**attributes, "messaging.destination.name": subject}
        span = tracer.start_span(
            name,
            context=producers[0][0] if producers else None,
            kind=SpanKind.CONSUMER,
            links=[Link(producer) for _, producer in producers if producer.is_valid],
            attributes=attributes,
        )
        return _Current(span)

    @contextlib.contextmanager
    def step(self, name: str, **attributes: Any) -> Iterator[Span | None]:
        """An INTERNAL span for work worth seeing in a trace (KV writes, rebuilds); None
        when off."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def dead_lettered(self, stream: str, consumer: str, reason: str) -> None:
        """Recorded on the current span (the message's `process` span) and counted."""
        if self.tracer is not None:
            trace.get_current_span().add_event(
                "dead_letter", {"bus.dlq.reason": reason[:500], "bus.dlq.stream": stream}
            )
        if self.observer is not None:
            self.observer.dead_lettered(stream, consumer)
