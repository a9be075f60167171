"""Reading stored messages by stream sequence with JetStream's batched direct get.

One request returns up to `limit` messages followed by an end-of-batch status, so paging
through a stream costs one round trip per page and creates no consumer.

Direct gets are answered by any replica of a stream, and a follower may not have applied what
the leader has just acknowledged. `read_from_leader` asks the stream leader itself (the
JetStream message-get API): one message per request, never older than an acknowledged write.
Replicated streams use it where a read must be fresh; a single replica is always fresh.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec
import nats.errors

from ._errors import BusTimeout, StreamError, StreamNotFound
from ._nats.connection import Connection
from ._nats.direct import StoredMessage, direct_get, direct_gets
from ._nats.wire import parse_headers
from ._streams import existing_name

_encode = msgspec.json.Encoder().encode
NO_MESSAGE = 10037  # JetStream err_code: no message found
STREAM_NOT_FOUND = 10059
STALE_PATIENCE = 0.5  # seconds a replica that is behind is waited for before asking the leader


class Reading(Protocol):
    """What reading needs of a Bus."""

    @property
    def nc(self) -> Connection: ...


async def read(
    bus: Reading,
    stream: str,
    from_seq: int = 1,
    limit: int = 100,
    subject: str | None = None,
    *,
    since: str | None = None,
) -> list[StoredMessage]:
    """Stored messages from `from_seq` on (or stored at or after `since`, an RFC 3339 time),
    one round trip per call (batched direct get): `Bus.read`."""
    return await read_messages(bus.nc, existing_name(stream), from_seq, limit, subject, since=since)


async def read_messages(
    nc: Connection,
    stream: str,
    from_seq: int = 1,
    limit: int = 100,
    subject: str | None = None,
    timeout: float = 5.0,
    *,
    since: str | None = None,
) -> list[StoredMessage]:
    """Up to `limit` messages with sequence >= `from_seq`, or stored at or after `since` (an
    RFC 3339 time) when given; matching `subject` if given."""
    if from_seq < 1 or limit < 1:
        raise ValueError("from_seq and limit must be >= 1")
    request: dict[str, object] = {"start_time": since} if since else {"seq": from_seq}
    request["batch"] = limit
    if subject:
        request["next_by_subj"] = subject
    found, _ = await direct_get(nc, stream, request, limit, timeout)
    return found


async def read_latest(nc: Connection, stream: str, page: int = 1000) -> dict[str, StoredMessage]:
    """The last message on each subject of `stream` (a KV bucket's entries, tombstones
    included), by subject: a page of the whole stream per round trip, so it suits streams
    holding about one message per subject. (`read_last` with a wildcard asks the server for
    them in one go, which it refuses past a thousand or so.)"""
    latest: dict[str, StoredMessage] = {}
    seq = 1
    while True:
        found = await read_messages(nc, stream, seq, page)
        for message in found:
            latest[message.subject] = message
        if len(found) < page:
            return latest
        seq = found[-1].seq + 1


async def read_last(
    nc: Connection,
    stream: str,
    subjects: list[str],
    limit: int = 1000,
    timeout: float = 5.0,
    *,
    at_least: int = 0,
) -> list[StoredMessage]:
    """The last message on each subject matching `subjects` (wildcards allowed), up to `limit`.

    With `at_least`, only as a replica that has stored that stream sequence sees them: one
    that has not caught up yet (it usually has within milliseconds) is asked again, and past
    STALE_PATIENCE, or when nothing matched (which says nothing of how far the replica is),
    the leader answers for each subject (then they must be literal subjects).
    """
    request = {"multi_last": subjects, "batch": limit}
    if not at_least:
        found, _ = await direct_get(nc, stream, request, limit, timeout)
        return found
    loop = asyncio.get_running_loop()
    give_up, pause = loop.time() + STALE_PATIENCE, 0.002
    while True:
        found, upto = await direct_get(nc, stream, request, limit, timeout, to_the_end=True)
        if upto is None:
            break  # nothing matched
        if upto >= at_least:
            return found
        if loop.time() + pause > give_up:
            break
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
    leader = [
        await read_from_leader(nc, stream, last_by_subject=subject, timeout=timeout)
        for subject in subjects
    ]
    return [message for message in leader if message is not None]


async def read_firsts(
    nc: Connection, stream: str, starts: list[tuple[int, str | None]], timeout: float = 5.0
) -> list[StoredMessage | None]:
    """The first message from each (sequence, subject filter or None), asked in one go: one
    round trip, and a server answers one connection's direct gets in the order sent, so a
    later question sees at least what an earlier one did."""
    requests: list[dict[str, object]] = []
    for seq, subject in starts:
        request: dict[str, object] = {"seq": seq, "batch": 1}
        if subject:
            request["next_by_subj"] = subject
        requests.append(request)
    answers = await direct_gets(nc, stream, requests, 1, timeout)
    return [found[0] if found else None for found, _ in answers]


class _LeaderMessage(msgspec.Struct):
    subject: str
    seq: int
    time: str = ""
    data: bytes = b""  # (base64 in the JSON, decoded by msgspec)
    hdrs: bytes = b""


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _LeaderAnswer(msgspec.Struct):
    message: _LeaderMessage | None = None
    error: _ApiError | None = None


_decode_leader = msgspec.json.Decoder(_LeaderAnswer).decode


async def read_from_leader(
    nc: Connection,
    stream: str,
    *,
    last_by_subject: str | None = None,
    next_by_subject: str | None = None,
    seq: int | None = None,
    timeout: float = 5.0,
) -> StoredMessage | None:
    """One message as the stream leader has it (None: no such message): the last on
    `last_by_subject`, or the first from `seq` on (matching `next_by_subject` if given)."""
    request: dict[str, object] = {}
    if last_by_subject is not None:
        request["last_by_subj"] = last_by_subject
    else:
        request["seq"] = seq or 1
        if next_by_subject is not None:
            request["next_by_subj"] = next_by_subject
    try:
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}", _encode(request), timeout=timeout
        )
    except nats.errors.NoRespondersError:
        raise StreamNotFound(stream) from None
    except nats.errors.TimeoutError:
        raise BusTimeout(f"the leader of {stream!r} did not answer in {timeout:g}s") from None
    except nats.errors.Error as exc:
        raise StreamError(f"reading {stream!r} from its leader: {exc}") from None
    try:
        answer = _decode_leader(reply.data)
    except msgspec.DecodeError:
        raise StreamError(f"reading {stream!r} from its leader: {reply.data[:80]!r}") from None
    if answer.error is not None:
        if answer.error.err_code == NO_MESSAGE:
            return None
        if answer.error.err_code == STREAM_NOT_FOUND:
            raise StreamNotFound(stream)
        raise StreamError(f"reading {stream!r} from its leader: {answer.error.description}")
    found = answer.message
    if found is None:
        return None
    _, hdrs = parse_headers(found.hdrs) if found.hdrs else (None, {})
    return StoredMessage(stream, found.seq, found.subject, found.time, found.data, hdrs)
