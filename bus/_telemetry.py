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
child of the producer context and linked to it; batches link to every message instead).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._envelope import current_envelope

SYSTEM = "nats"


class Observer(Protocol):
    """Receives metric observations; labels are bounded (streams, consumers, outcomes)."""

    def published(self, destination: str, outcome: str, seconds: float, count: int) -> None: ...

    def processed(self, consumer: str, outcome: str, seconds: float, count: int) -> None: ...

    def dead_lettered(self, stream: str, consumer: str) -> None: ...


# The unsampled trace a message being handled belongs to: its `traceparent`, passed on by
# what the handler publishes. A plain context variable: no span, no OpenTelemetry context.
_unsampled_parent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bus_unsampled_parent", default=None
)


def _unsampled(headers: Mapping[str, str]) -> str | None:
    """The message's traceparent if it is one of an unsampled trace, else None: a canonical
    one with the sampled flag clear (a malformed one names no parent at all). Read whatever
    the propagator: the bus writes unsampled traceparents itself."""
    parent = headers.get("traceparent")
    if parent is None or len(parent) != 55 or parent[-1] not in "02468ace":
        return None
    return parent if _CANONICAL.fullmatch(parent) else None


def leave_unsampled(token: contextvars.Token[str | None]) -> None:
    _unsampled_parent.reset(token)


def _passed_on() -> str | None:
    """The traceparent to pass on unsampled, if the current work is not sampled."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return None if current.trace_flags.sampled else _traceparent(current)
    return _unsampled_parent.get()


def _traceparent(span_context: SpanContext) -> str:
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


# What the bus itself writes: the one W3C form `propagate.extract` reads the same way, with
# ids that are not all zero (those mean "no parent"); anything else goes to the propagator.
_CANONICAL = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")
_W3C_FIELDS = {"traceparent", "tracestate", "baggage"}
_propagation: tuple[object, bool] = (None, False)  # (global propagator, is W3C trace context)


def _w3c() -> bool:
    """Whether the global propagator carries the W3C trace context (and perhaps W3C baggage)
    and nothing else, so that a `traceparent` alone carries everything it would write or
    read (judged by the header fields it declares, the API's public view of it)."""
    global _propagation
    textmap = propagate.get_global_textmap()
    if _propagation[0] is not textmap:
        fields = set(textmap.fields)
        _propagation = (textmap, "traceparent" in fields and fields <= _W3C_FIELDS)
    return _propagation[1]


def _inject(headers: dict[str, str], span: Span) -> None:
    """`propagate.inject` of the span's context; written directly when a traceparent is all
    the propagator would write (no tracestate, no baggage)."""
    span_context = span.get_span_context()
    if span_context.trace_state or baggage.get_all() or not _w3c():
        propagate.inject(headers, context=trace.set_span_in_context(span))
    else:
        headers["traceparent"] = _traceparent(span_context)


def _extract(headers: Mapping[str, str]) -> tuple[Context, SpanContext]:
    """`propagate.extract(headers)` and the producer's span context in it; read directly when
    the propagator is W3C and the message carries no tracestate or baggage, and either no
    traceparent or a canonical one."""
    if "tracestate" not in headers and "baggage" not in headers and _w3c():
        parent = headers.get("traceparent")
        if parent is None:
            return _NO_PARENT
        if len(parent) == 55 and (found := _remote(parent)) is not None:
            return found
    extracted = propagate.extract(headers)
    return extracted, trace.get_current_span(extracted).get_span_context()


_NO_PARENT = (Context(), trace.INVALID_SPAN_CONTEXT)


@functools.lru_cache(maxsize=256)
def _remote(traceparent: str) -> tuple[Context, SpanContext] | None:
    """What `_extract` returns for a canonical traceparent, or None for any other form; the
    messages of a batch share theirs, so it is read once."""
    match = _CANONICAL.fullmatch(traceparent)
    if match is None:
        return None
    trace_id, span_id, flags = match.groups()
    producer = SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
    )
    return trace.set_span_in_context(NonRecordingSpan(producer), Context()), producer


# -- passing a caller's context on while this process traces nothing ------------------------
# With no SDK the OpenTelemetry API still carries an incoming context (a non-recording span
# holds it), so a traced component downstream continues the caller's trace. The bus does the
# same with no API machinery per message: it passes the caller's own `traceparent` (and
# `tracestate`) on, found where the work being done came from.

_incoming: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "bus_incoming_trace", default=None
)
_W3C_READER = TraceContextTextMapPropagator()


class _Continuing:
    """`Telemetry.continuing` without a generator's layers (it wraps every publishing
    request)."""

    __slots__ = ("carrier", "token")

    def __init__(self, carrier: Mapping[str, str]) -> None:
        self.carrier = carrier
        self.token: contextvars.Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        self.token = _incoming.set(_pass_on(self.carrier))

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _incoming.reset(self.token)


def _carried() -> dict[str, str] | None:
    """The trace context an event published now passes on while tracing is off (not to be
    changed): the current span's (someone made a caller's context current, as the MCP SDK does
    with a request's `_meta`), else the request's being served (`continuing`), else the
    handled message's."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return _written(span_context)
    incoming = _incoming.get()
    if incoming is not None:
        return incoming
    envelope = current_envelope.get()
    return None if envelope is None else _pass_on(envelope.headers)


def _pass_on(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace context of `carrier` as the propagator would write it again, or None
    when it names no valid parent (a malformed traceparent is not passed on)."""
    parent = carrier.get("traceparent")
    if parent is None:
        return None
    if "tracestate" not in carrier and len(parent) == 55 and _CANONICAL.fullmatch(parent):
        return {"traceparent": parent}  # (what a handled message of ours carries)
    span_context = trace.get_current_span(_W3C_READER.extract(carrier)).get_span_context()
    return _written(span_context) if span_context.is_valid else None


def _written(span_context: SpanContext) -> dict[str, str]:
    written = {"traceparent": _traceparent(span_context)}
    if span_context.trace_state:
        written["tracestate"] = span_context.trace_state.to_header()
    return written


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


class _Unsampled:
    """No span, only the unsampled traceparent to pass on (see `enter_unsampled`)."""

    __slots__ = ("parent", "token")

    def __init__(self, parent: str) -> None:
        self.parent = parent

    def __enter__(self) -> None:
        self.token = _unsampled_parent.set(self.parent)

    def __exit__(self, *exc_info: object) -> None:
        _unsampled_parent.reset(self.token)


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
        return _OFF if self.tracer is not None else _Continuing(carrier)

    def enter_unsampled(self, headers: Mapping[str, str]) -> contextvars.Token[str | None] | None:
        """Handle a message of an unsampled trace without a span (a parent-based sampler
        would drop it anyway); returns the token to `leave_unsampled`, or None: make a span."""
        parent = _unsampled(headers) if self.parent_decides else None
        return None if parent is None else _unsampled_parent.set(parent)

    def start_publish(
        self, template: str, event_id: str, headers: dict[str, str], size: int
    ) -> Span | None:
        """A PRODUCER span for one event, its context written into `headers`; None when off
        (then the caller's context, if any, is passed on as it came: see `_carried`).

        An unsampled context travels as a bare `traceparent` (what the next hop needs to
        drop its span too), without the SDK's per-message propagation machinery."""
        tracer = self.tracer
        if tracer is None:
            if (carried := _carried()) is not None:
                headers.update(carried)
            return None
        if self.parent_decides and (parent := _passed_on()):
            headers["traceparent"] = parent
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
        if span.is_recording():
            _inject(headers, span)
            return span
        headers["traceparent"] = _traceparent(span.get_span_context())
        return None

    @contextlib.contextmanager
    def publishing_batch(self, template: str, count: int) -> Iterator[dict[str, str] | None]:
        """One PRODUCER span for a pipelined batch (the conventions' batch "send"), its
        context for every message of it: the headers to add to each; when tracing is off,
        the caller's context passed on (or None: nothing to add)."""
        tracer = self.tracer
        if tracer is None:
            yield _carried()
            return
        if self.parent_decides and (parent := _passed_on()):
            yield {"traceparent": parent}
            return
        name, attributes = _publish_attributes(template)
        attributes = {**attributes, "messaging.batch.message_count": count}
        span = tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        headers: dict[str, str] = {}
        if span.is_recording():
            _inject(headers, span)
        else:
            headers["traceparent"] = _traceparent(span.get_span_context())
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
        parent = _unsampled(headers[0]) if headers and self.parent_decides else None
        if parent is not None:
            return _Unsampled(parent)
        producers = [_extract(h) for h in headers]
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
