"""The trace context a message carries in its headers, read and written the W3C way.

The bus writes and reads a plain `traceparent` itself where that is all the global
propagator would write or read (most of what a sampled span costs is the propagation
machinery); anything else goes through `opentelemetry.propagate`. With tracing off, the
caller's context is passed on as it came (`carried`): a request's (`Continuing`) or a handled
message's. A message of a trace a parent-based sampler dropped is handled without a span and
its `traceparent` passed on unsampled (`unsampled_parent`).
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Mapping

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._envelope import current_envelope

# The unsampled trace a message being handled belongs to: its `traceparent`, passed on by
# what the handler publishes. A plain context variable: no span, no OpenTelemetry context.
unsampled_parent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "busunsampled_parent", default=None
)


def unsampled(headers: Mapping[str, str]) -> str | None:
    """The message's traceparent if it is one of an unsampled trace, else None: a canonical
    one with the sampled flag clear (a malformed one names no parent at all). Read whatever
    the propagator: the bus writes unsampled traceparents itself."""
    parent = headers.get("traceparent")
    if parent is None or len(parent) != 55 or parent[-1] not in "02468ace":
        return None
    return parent if CANONICAL.fullmatch(parent) else None


def leave_unsampled(token: contextvars.Token[str | None]) -> None:
    unsampled_parent.reset(token)


def passed_on() -> str | None:
    """The traceparent to pass on unsampled, if the current work is not sampled."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return None if current.trace_flags.sampled else traceparent_of(current)
    return unsampled_parent.get()


def traceparent_of(span_context: SpanContext) -> str:
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


# What the bus itself writes: the one W3C form `propagate.extract` reads the same way, with
# ids that are not all zero (those mean "no parent"); anything else goes to the propagator.
CANONICAL = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")
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


def inject(headers: dict[str, str], span: Span) -> None:
    """`propagate.inject` of the span's context; written directly when a traceparent is all
    the propagator would write (no tracestate, no baggage)."""
    span_context = span.get_span_context()
    if span_context.trace_state or baggage.get_all() or not _w3c():
        propagate.inject(headers, context=trace.set_span_in_context(span))
    else:
        headers["traceparent"] = traceparent_of(span_context)


def extract(headers: Mapping[str, str]) -> tuple[Context, SpanContext]:
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
    match = CANONICAL.fullmatch(traceparent)
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


class Continuing:
    """`Telemetry.continuing` without a generator's layers (it wraps every publishing
    request)."""

    __slots__ = ("carrier", "token")

    def __init__(self, carrier: Mapping[str, str]) -> None:
        self.carrier = carrier
        self.token: contextvars.Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        self.token = _incoming.set(pass_on(self.carrier))

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _incoming.reset(self.token)


def carried() -> dict[str, str] | None:
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
    return None if envelope is None else pass_on(envelope.headers)


def pass_on(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace context of `carrier` as the propagator would write it again, or None
    when it names no valid parent (a malformed traceparent is not passed on)."""
    parent = carrier.get("traceparent")
    if parent is None:
        return None
    if "tracestate" not in carrier and len(parent) == 55 and CANONICAL.fullmatch(parent):
        return {"traceparent": parent}  # (what a handled message of ours carries)
    span_context = trace.get_current_span(_W3C_READER.extract(carrier)).get_span_context()
    return _written(span_context) if span_context.is_valid else None


def _written(span_context: SpanContext) -> dict[str, str]:
    written = {"traceparent": traceparent_of(span_context)}
    if span_context.trace_state:
        written["tracestate"] = span_context.trace_state.to_header()
    return written


class Unsampled:
    """No span, only the unsampled traceparent to pass on (see `enter_unsampled`)."""

    __slots__ = ("parent", "token")

    def __init__(self, parent: str) -> None:
        self.parent = parent

    def __enter__(self) -> None:
        self.token = unsampled_parent.set(self.parent)

    def __exit__(self, *exc_info: object) -> None:
        unsampled_parent.reset(self.token)
