"""The stored envelope: an event plus the metadata its headers carry, kept apart from the event.

`current_envelope` is set while a handler runs, so events published from inside a handler
inherit its correlation id and name it as their cause without the handler passing anything.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from . import _headers as h
from ._codec import Codec
from ._errors import DecodeError, InvalidSubject
from ._events import Event, EventRegistry
from ._principal import current_principal
from ._subjects import parse_event_subject

E = TypeVar("E", bound=Event)


class Envelope(msgspec.Struct, Generic[E], frozen=True, kw_only=True):
    """One delivered or stored event with its metadata (from headers and the JetStream reply)."""

    event: E
    id: str
    subject: str
    occurred_at: str
    correlation_id: str
    causation_id: str | None = None
    principal: str | None = None  # who published it through the edge (Bus-Principal)
    stream: str | None = None
    seq: int | None = None
    attempt: int = 1
    headers: dict[str, str] = {}


current_envelope: ContextVar[Envelope[Event] | None] = ContextVar("current_envelope", default=None)


_last: list[Any] = [-1, -1, "", ""]  # second, millisecond, the second's text, the stamp


def now_rfc3339() -> str:
    """Now as `rfc3339` has it, made once a millisecond (the seconds' text once a second):
    every event and record is stamped, a busy process many times a millisecond, and a
    datetime each time was a few % of it."""
    ms = time.time_ns() // 1_000_000
    if ms != _last[1]:
        second = ms // 1000
        if second != _last[0]:
            _last[0], _last[2] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last[1], _last[3] = ms, f"{_last[2]}.{ms % 1000:03d}Z"
    return str(_last[3])


def rfc3339(epoch: float) -> str:
    """`epoch` seconds as events stamp their time (milliseconds, `Z`): stamps compare as
    strings."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_headers(
    event: Event,
    event_id: str,
    mime: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> dict[str, str]:
    """Headers for a new event; causal ids default to the handler's envelope, if any."""
    if correlation_id is None:
        parent = current_envelope.get()
        if parent is not None:
            correlation_id = parent.correlation_id
            causation_id = causation_id or parent.id
    hdrs = {
        h.MSG_ID: event_id,
        h.EVENT_TYPE: event.__event_type__,
        h.EVENT_VERSION: str(event.__event_version__),
        h.OCCURRED_AT: now_rfc3339(),
        h.CORRELATION_ID: correlation_id or event_id,
        h.CONTENT_TYPE: mime,
    }
    if causation_id:
        hdrs[h.CAUSATION_ID] = causation_id
    if principal := current_principal():
        hdrs[h.PRINCIPAL] = principal
    return hdrs


def resolve_type(subject: str, hdrs: dict[str, str], registry: EventRegistry) -> type[Event]:
    """The event class a message claims, from its type header or else from its subject."""
    event_type = hdrs.get(h.EVENT_TYPE)
    if event_type:
        return registry.by_type(event_type)
    try:
        domain, _, name = parse_event_subject(subject)
    except InvalidSubject:
        raise DecodeError(
            "no Bus-Event-Type header and the subject names no event", subject
        ) from None
    cls = registry.by_subject(domain, name)
    if cls is None:
        raise DecodeError("no Bus-Event-Type header and no event registered for it", subject)
    return cls


def open_message(
    subject: str,
    data: bytes,
    hdrs: dict[str, str] | None,
    registry: EventRegistry,
    codec: Codec,
    *,
    stream: str | None = None,
    seq: int | None = None,
    attempt: int = 1,
) -> Envelope[Event]:
    """Decode one message into an Envelope; raise DecodeError for anything unreadable."""
    hdrs = hdrs or {}
    if codec.protection is not None:  # (Rejected when it may not be read)
        data = codec.protection.open(subject, data, hdrs)
    cls = resolve_type(subject, hdrs, registry)
    raw_version = hdrs.get(h.EVENT_VERSION)
    try:
        version = int(raw_version) if raw_version else cls.__event_version__
    except ValueError:
        raise DecodeError(f"bad {h.EVENT_VERSION} header {raw_version!r}", subject) from None
    mime = hdrs.get(h.CONTENT_TYPE) or h.JSON
    event = codec.decode_upcast(data, cls, version, registry, mime)
    event_id = hdrs.get(h.MSG_ID) or ""
    return Envelope(
        event=event,
        id=event_id,
        subject=subject,
        occurred_at=hdrs.get(h.OCCURRED_AT, ""),
        correlation_id=hdrs.get(h.CORRELATION_ID) or event_id,
        causation_id=hdrs.get(h.CAUSATION_ID),
        principal=hdrs.get(h.PRINCIPAL),
        stream=stream,
        seq=seq,
        attempt=attempt,
        headers=hdrs,
    )
