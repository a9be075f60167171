"""JetStream's batched direct get, spoken on the fast lane: one request returns up to a
batch of stored messages and an end-of-batch status, all answered on one inbox lane per
connection, so a read creates no consumer and no subscription of its own."""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

from bus import _headers as h
from bus._errors import BusTimeout, StreamError, StreamNotFound

from .connection import Connection
from .wire import parse_headers

_encode = msgspec.json.Encoder().encode


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


async def direct_get(
    nc: Connection,
    stream: str,
    request: dict[str, object],
    limit: int,
    timeout: float,
    *,
    to_the_end: bool = False,
) -> tuple[list[StoredMessage], int | None]:
    """One batched direct get (see `_direct_gets`)."""
    return (await direct_gets(nc, stream, [request], limit, timeout, to_the_end=to_the_end))[0]


async def direct_gets(
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
