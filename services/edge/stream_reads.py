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
ID_PAGES = 4  # pages read around an id's time before it is declared absent


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


async def newest_first(
    bus: Bus, name: str, before_seq: int | None, limit: int, subject: str | None
) -> dict[str, Any]:
    """Up to `limit` messages before `before_seq` (default: all), newest first, and the
    `before_seq` of the next (older) page, null on the last. Windows below `before_seq` are
    read by sequence, doubling while a filter matches too few."""
    info = await bus.streams.info(name)
    end = min(before_seq or info.last_seq + 1, info.last_seq + 1)
    first = max(1, info.first_seq)  # an empty stream says 0
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


async def by_id(bus: Bus, name: str, event_id: str) -> dict[str, Any]:
    """The event whose id is `event_id`, found from the time a UUIDv7 carries (ids the bus
    makes): a few pages read from there, never the whole stream."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        raise HTTPException(400, "the id is not a UUID") from None
    if parsed.version != 7:
        raise HTTPException(400, "only time-ordered ids (UUIDv7) can be looked up")
    at = datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)
    since = (at - ID_SLACK).isoformat().replace("+00:00", "Z")
    seq = 1
    for n in range(ID_PAGES):
        page = await bus.read(name, seq, 256, since=since if n == 0 else None)
        match = next((m for m in page if m.event_id == event_id), None)
        if match is not None:
            return shown(bus, match, headers=True)
        if len(page) < 256 or page[-1].time > (at + ID_SLACK).isoformat():
            break
        seq = page[-1].seq + 1
    raise HTTPException(404, f"stream {name!r} holds no event {event_id}")
