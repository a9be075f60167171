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
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors

from . import _headers as h
from ._errors import BusTimeout, StreamError, StreamNotFound
from .connection import Connection, parse_headers

_encode = msgspec.json.Encoder().encode
NO_MESSAGE = 10037  # JetStream err_code: no message found
STREAM_NOT_FOUND = 10059
STALE_PATIENCE = 0.5  # seconds a replica that is behind is waited for before asking the leader


class StoredMessage(msgspec.Struct, frozen=True):
    """A message as the stream holds it: its own subject, headers and bytes."""

    stream: str
    seq: int
    subject: str
    time: str
    data: bytes
    headers: dict[str, str]
    pending: int = 0  # messages after this one that the read would match (direct get only)

    @property
    def event_id(self) -> str:
        """The event id it was published with (`Nats-Msg-Id`; empty if none)."""
        return self.headers.get(h.MSG_ID, "")


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
    found, _ = await _direct_get(nc, stream, request, limit, timeout)
    return found


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
        found, _ = await _direct_get(nc, stream, request, limit, timeout)
        return found
    loop = asyncio.get_running_loop()
    give_up, pause = loop.time() + STALE_PATIENCE, 0.002
    while True:
        found, upto = await _direct_get(nc, stream, request, limit, timeout, to_the_end=True)
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
    answers = await _direct_gets(nc, stream, requests, 1, timeout)
    return [found[0] if found else None for found, _ in answers]


async def _direct_get(
    nc: Connection,
    stream: str,
    request: dict[str, object],
    limit: int,
    timeout: float,
    *,
    to_the_end: bool = False,
) -> tuple[list[StoredMessage], int | None]:
    """One batched direct get (see `_direct_gets`)."""
    return (await _direct_gets(nc, stream, [request], limit, timeout, to_the_end=to_the_end))[0]


async def _direct_gets(
    nc: Connection,
    stream: str,
    requests: list[dict[str, object]],
    limit: int,
    timeout: float,
    *,
    to_the_end: bool = False,
) -> list[tuple[list[StoredMessage], int | None]]:
    """Batched direct gets sent together, each answered on a lane until its end-of-batch
    status (or its `limit`th message, unless `to_the_end`). Returns, for each, the messages
    and the sequence the answering replica had stored when it read them (from a
    multi-subject end of batch; None when it does not say)."""
    loop = asyncio.get_running_loop()
    outs: list[list[StoredMessage]] = [[] for _ in requests]
    uptos: list[int | None] = [None for _ in requests]
    dones: list[asyncio.Future[None]] = [loop.create_future() for _ in requests]

    def receive(i: int, data: bytes, raw: bytes | None) -> None:
        status, hdrs = parse_headers(raw) if raw else (None, {})
        out, done = outs[i], dones[i]
        if done.done():
            return
        if status is None:
            out.append(_stored(data, hdrs))
            if len(out) >= limit and not to_the_end:
                done.set_result(None)
        elif status in ("204", "404"):  # end of batch, or nothing matched
            if h.UP_TO_SEQUENCE in hdrs:
                uptos[i] = int(hdrs[h.UP_TO_SEQUENCE])
            done.set_result(None)
        elif status == "503":
            done.set_exception(StreamNotFound(stream))
        else:
            reason = hdrs.get(h.DESCRIPTION, "")
            done.set_exception(StreamError(f"direct get on {stream!r}: {status} {reason}"))

    replies = await _replies(nc)
    tokens = replies.expect(len(requests), receive)
    try:
        for request, token in zip(requests, tokens, strict=True):
            nc.buffer(f"$JS.API.DIRECT.GET.{stream}", _encode(request), replies.subject(token))
        nc.flush_soon()
        async with asyncio.timeout(timeout):
            for done in dones:
                await done
    except TimeoutError:
        raise BusTimeout(f"direct get on {stream!r} did not answer in {timeout:g}s") from None
    finally:
        replies.forget(tokens)
    return list(zip(outs, uptos, strict=True))


class _Replies:
    """One inbox lane per connection that every direct get is answered on: a read then
    costs no subscription of its own (nats-py makes a task for each). Answers find their
    read by the last token of the reply subject."""

    def __init__(self, nc: Connection) -> None:
        self._prefix = nc.new_inbox()
        self._waiting: dict[int, tuple[Callable[[int, bytes, bytes | None], None], int]] = {}
        self._tokens = itertools.count()
        self.ready: asyncio.Task[Any] = asyncio.ensure_future(
            nc.open_lane(f"{self._prefix}.*", self._receive)
        )

    def subject(self, token: int) -> str:
        return f"{self._prefix}.{token}"

    def expect(self, count: int, receive: Callable[[int, bytes, bytes | None], None]) -> list[int]:
        """Tokens for `count` reads, whose answers go to `receive(index, data, headers)`."""
        tokens = [next(self._tokens) for _ in range(count)]
        for i, token in enumerate(tokens):
            self._waiting[token] = (receive, i)
        return tokens

    def forget(self, tokens: list[int]) -> None:
        for token in tokens:
            self._waiting.pop(token, None)

    def _receive(self, subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
        waiting = self._waiting.get(int(subject[subject.rfind(b".") + 1 :]))
        if waiting is not None:
            receive, i = waiting
            receive(i, data, raw)


_lanes: weakref.WeakKeyDictionary[Connection, _Replies] = weakref.WeakKeyDictionary()


async def _replies(nc: Connection) -> _Replies:
    replies = _lanes.get(nc)
    if replies is None:
        replies = _lanes[nc] = _Replies(nc)
    try:
        await asyncio.shield(replies.ready)
    except BaseException:
        if replies.ready.done():  # it could not subscribe: the next read tries again
            _lanes.pop(nc, None)
        raise
    return replies


def _stored(data: bytes, hdrs: dict[str, str]) -> StoredMessage:
    """The message a direct get returned; the headers about storage move to fields."""
    pop = hdrs.pop
    stream, seq, subject = (
        pop("Nats-Stream", ""),
        pop("Nats-Sequence", "0"),
        pop("Nats-Subject", ""),
    )
    stamp, pending = pop("Nats-Time-Stamp", ""), pop("Nats-Num-Pending", "0")
    pop("Nats-Last-Sequence", None)
    return StoredMessage(stream, int(seq), subject, stamp, data, hdrs, int(pending))


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
