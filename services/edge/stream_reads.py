"""Reading a stream for people: newest first, filtered by subject, one event with every
header, and an event found by its id. Always by sequence (or time), never a scan, so the
first and last pages of a stream of millions cost what they cost on a small one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException

from bus import Bus, BusError, StoredMessage

MAX_SEQ = 2**63 - 1  # past this the server refuses the read as malformed
ID_SLACK = timedelta(seconds=5)  # publisher and server clocks may disagree this much
ID_PAGES = 4  # pages read around an id's time (or before its effect) before it is absent
ID_PAGE = 256  # messages a page


def shown(bus: Bus, m: StoredMessage, *, headers: bool = False) -> dict[str, Any]:
    """A stored message as the API shows it: decoded with its metadata (or why it cannot be)."""
    item: dict[str, Any] = {"seq": m.seq, "subject": m.subject, "time": m.time}
    try:
        envelope = bus.open(m)
        item |= {
            "type": type(envelope.event).__event_type__,
            "id": envelope.id,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
            "principal": envelope.principal,
            "data": envelope.event,
        }
    except BusError as exc:  # shown as what it is, not hidden
        item |= {"type": m.headers.get("Bus-Event-Type"), "undecodable": str(exc)}
    if headers:
        item["headers"] = m.headers
    return item


async def _range(
    bus: Bus, name: str, lo: int, hi: int, subject: str | None, batch: int
) -> list[StoredMessage]:
    """Every message in [lo, hi) matching `subject`, `batch` a round trip (what a read finds
    past `hi` is dropped: small batches drop little)."""
    found: list[StoredMessage] = []
    seq = lo
    while seq < hi:
        wanted = min(hi - seq, batch)
        page = await bus.read(name, seq, wanted, subject)
        found += [m for m in page if m.seq < hi]
        if len(page) < wanted or page[-1].seq >= hi - 1:  # the stream's end, or the range's
            break
        seq = page[-1].seq + 1
    return found


async def _below(bus: Bus, name: str, before_seq: int | None) -> tuple[int, int]:
    """The stream's first sequence and the end (exclusive) of what lies before `before_seq`
    (default: the whole stream)."""
    info = await bus.streams.info(name)
    end = min(before_seq or info.last_seq + 1, info.last_seq + 1)
    return max(1, info.first_seq), end  # (an empty stream says first 0)


async def newest_first(
    bus: Bus, name: str, before_seq: int | None, limit: int, subject: str | None
) -> dict[str, Any]:
    """Up to `limit` messages before `before_seq` (default: all), newest first, and the
    `before_seq` of the next (older) page, null on the last. Windows below `before_seq` are
    read by sequence, doubling while a filter matches too few."""
    first, end = await _below(bus, name, before_seq)
    found: list[StoredMessage] = []
    start, window = end, limit
    while start > first and len(found) < limit:
        lo = max(first, start - window)
        found = await _range(bus, name, lo, start, subject, limit) + found
        start, window = lo, window * 2
    page = found[-limit:][::-1]
    more = len(found) > limit or start > first
    return {
        "items": [shown(bus, m) for m in page],
        "next_before_seq": page[-1].seq if page and more else None,
    }


async def one(bus: Bus, name: str, seq: int) -> dict[str, Any]:
    """Message `seq` of stream `name` with every header; 404 if the stream has none."""
    found = await bus.read(name, seq, 1)
    if not found or found[0].seq != seq:
        raise HTTPException(404, f"stream {name!r} has no message {seq}")
    return shown(bus, found[0], headers=True)


async def by_id(
    bus: Bus, name: str, event_id: str, before_seq: int | None = None
) -> dict[str, Any]:
    """The event whose id is `event_id`, with every header: a few pages read, never the whole
    stream. A UUIDv7 (an id the bus makes) carries its time: read from there. A UUIDv8 (an id
    a handler derives, bus._followups) carries none, but its event was stored before the
    events it caused: read back by sequence from `before_seq` (the event linking to it; by
    default the stream's end)."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        raise HTTPException(400, "the id is not a UUID") from None
    if parsed.version == 8:
        found = await _before(bus, name, event_id, before_seq)
    elif parsed.version == 7:
        found = await _from_time(bus, name, event_id, parsed)
    else:
        raise HTTPException(400, "only ids the bus makes (UUIDv7) or derives (UUIDv8) are found")
    if found is None:
        raise HTTPException(404, f"stream {name!r} holds no event {event_id}")
    return shown(bus, found, headers=True)


async def _from_time(bus: Bus, name: str, event_id: str, parsed: uuid.UUID) -> StoredMessage | None:
    at = datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)
    since = (at - ID_SLACK).isoformat().replace("+00:00", "Z")
    seq = 1
    for n in range(ID_PAGES):
        page = await bus.read(name, seq, ID_PAGE, since=since if n == 0 else None)
        match = next((m for m in page if m.event_id == event_id), None)
        if match is not None or len(page) < ID_PAGE or page[-1].time > (at + ID_SLACK).isoformat():
            return match
        seq = page[-1].seq + 1
    return None


async def _before(
    bus: Bus, name: str, event_id: str, before_seq: int | None
) -> StoredMessage | None:
    """Newest first from `before_seq`: a handler's event is usually just before its effects."""
    first, end = await _below(bus, name, before_seq)
    for _ in range(ID_PAGES):
        if end <= first:
            break
        lo = max(first, end - ID_PAGE)
        page = await _range(bus, name, lo, end, None, ID_PAGE)
        match = next((m for m in reversed(page) if m.event_id == event_id), None)
        if match is not None:
            return match
        end = lo
    return None
