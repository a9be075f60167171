"""Dead letters: a message that failed `max_deliver` times, or cannot be decoded, is copied to
`DLQ_<STREAM>` with the reason, and only then terminated. Nothing is dropped silently.

Replay republishes a dead letter, with its original event id and headers, to its original
subject, so every consumer of that subject sees it again (handlers are idempotent by event id,
as at-least-once delivery requires anyway), and removes it from the dead-letter stream.
"""

from __future__ import annotations

import contextlib

import msgspec
import nats.errors

from . import _headers as h
from ._errors import PublishError, StreamNotFound
from ._nats.acks import PublishResult
from ._nats.connection import Connection
from ._nats.direct import StoredMessage
from ._nats.wire import Outgoing
from ._publish import Publisher
from ._reader import Reading, read_messages
from ._streams import dead_letter_stream, dead_letter_subject

ORIGINAL_MSG_ID = "Bus-Original-Msg-Id"
_DLQ_ONLY = (h.DLQ_REASON, h.DLQ_CONSUMER, h.ORIGINAL_SUBJECT, h.ORIGINAL_SEQ, ORIGINAL_MSG_ID)
MAX_REASON = 1000  # characters kept of an exception message


class DeadLetter(msgspec.Struct, frozen=True):
    """One entry of a dead-letter stream, as `bus dlq list` shows it."""

    seq: int
    time: str
    reason: str
    consumer: str
    original_subject: str
    original_seq: int
    event_id: str
    event_type: str
    data: bytes
    headers: dict[str, str]

    @classmethod
    def from_stored(cls, m: StoredMessage) -> DeadLetter:
        hd = m.headers
        return cls(
            seq=m.seq,
            time=m.time,
            reason=hd.get(h.DLQ_REASON, ""),
            consumer=hd.get(h.DLQ_CONSUMER, ""),
            original_subject=hd.get(h.ORIGINAL_SUBJECT, ""),
            original_seq=int(hd.get(h.ORIGINAL_SEQ) or 0),
            event_id=hd.get(ORIGINAL_MSG_ID, ""),
            event_type=hd.get(h.EVENT_TYPE, ""),
            data=m.data,
            headers=hd,
        )


def dead_letter_message(
    stream: str,
    seq: int,
    subject: str,
    data: bytes,
    hdrs: dict[str, str] | None,
    consumer: str,
    reason: str,
) -> Outgoing:
    """The copy to store in DLQ_<stream>; its msg id makes a repeated copy a no-op."""
    out = {k: v for k, v in (hdrs or {}).items() if k not in _DLQ_ONLY}
    original_id = out.pop(h.MSG_ID, "")
    msg_id = f"{stream}:{seq}:{consumer}"
    out.update(
        {
            h.MSG_ID: msg_id,
            h.DLQ_REASON: _one_line(reason),
            h.DLQ_CONSUMER: consumer,
            h.ORIGINAL_SUBJECT: subject,
            h.ORIGINAL_SEQ: str(seq),
            ORIGINAL_MSG_ID: original_id,
        }
    )
    return Outgoing(dead_letter_subject(stream, subject), data, out, msg_id)


def _one_line(text: str) -> str:
    """Header values cannot hold line breaks; long exception texts are cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"


async def list_dead_letters(
    nc: Connection, stream: str, from_seq: int = 1, limit: int = 100
) -> list[DeadLetter]:
    messages = await read_messages(nc, dead_letter_stream(stream), from_seq, limit)
    return [DeadLetter.from_stored(m) for m in messages]


async def replay(nc: Connection, publisher: Publisher, stream: str, seq: int) -> PublishResult:
    """Republish dead letter `seq` of `stream` to its original subject, then delete it."""
    dlq = dead_letter_stream(stream)
    found = await read_messages(nc, dlq, seq, 1)
    if not found or found[0].seq != seq:
        raise StreamNotFound(f"{dlq} has no message {seq}")
    letter = DeadLetter.from_stored(found[0])
    hdrs = {k: v for k, v in letter.headers.items() if k not in _DLQ_ONLY}
    hdrs[h.MSG_ID] = letter.event_id or f"{stream}:{letter.original_seq}"
    hdrs[h.REPLAYED_FROM] = f"{dlq}:{seq}"
    result = await publisher.send(
        Outgoing(letter.original_subject, letter.data, hdrs, hdrs[h.MSG_ID])
    )
    if result.duplicate:
        raise PublishError(
            letter.original_subject,
            f"{stream} still holds event {letter.event_id} inside its duplicate window; "
            "replay again once the window has passed",
        )
    with contextlib.suppress(nats.errors.Error):  # a leftover entry is visible and harmless
        await nc.jetstream().delete_msg(dlq, seq)
    return result


async def discard(bus: Reading, stream: str, seq: int) -> None:
    """Delete dead letter `seq` of `stream`: given up on, on purpose (`Bus.discard`;
    StreamNotFound when there is no such dead letter)."""
    dlq = dead_letter_stream(stream)
    try:
        await bus.nc.jetstream().delete_msg(dlq, seq)
    except nats.errors.Error as exc:
        raise StreamNotFound(f"{dlq} has no message {seq}") from exc
