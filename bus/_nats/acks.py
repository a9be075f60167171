"""What JetStream answers a publish, read into a PublishResult or into our error."""

from __future__ import annotations

import msgspec

from bus import _headers as h
from bus._errors import ConcurrencyError, NoStreamForSubject, PublishError
from bus._nats.wire import Outgoing

WRONG_LAST_SEQUENCE = 10071  # JetStream err_code for a stale expected sequence, and the
WRONG_LAST_SEQUENCE_UNSAID = 10164  # same when it cannot say which (a guarded write in flight)
# Answers the publisher gives itself: the server's "no responders" status, and a message it
# never sent because the server could not take it.
NO_RESPONDERS = b'{"error":{"code":503,"description":"no responders"}}'
TOO_LARGE = b'{"error":{"code":413,"description":"maximum payload exceeded"}}'


class PublishResult(msgspec.Struct, frozen=True):
    """Where an event landed; `duplicate` means it was already stored (a safe retry)."""

    event_id: str
    subject: str
    stream: str
    seq: int
    duplicate: bool = False


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


def read_ack(out: Outgoing, data: bytes) -> PublishResult:
    """The result of publishing `out`, or the BusError its ack says instead."""
    try:
        ack = _decode_ack(data)
    except msgspec.DecodeError:
        raise PublishError(out.subject, f"unreadable ack {data[:80]!r}") from None
    if ack.error is not None:
        err = ack.error
        if err.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_UNSAID):
            expected = int(out.headers.get(h.EXPECTED_LAST_SUBJECT_SEQ, "0"))
            raise ConcurrencyError(out.subject, expected, _trailing_int(err.description))
        if err.code == 503:
            raise NoStreamForSubject(out.subject)
        raise PublishError(out.subject, err.description, err.err_code or err.code)
    return PublishResult(out.event_id, out.subject, ack.stream, ack.seq, ack.duplicate)


def _trailing_int(text: str) -> int | None:
    tail = text.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else None
