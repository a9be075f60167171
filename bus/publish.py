"""Publishing events to JetStream: one awaited, or many pipelined with their acks gathered.

Retrying a publish is always safe: the event id travels as `Nats-Msg-Id`, so JetStream stores
an event once within the stream's duplicate window and answers the retry with `duplicate`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import headers as h
from .codec import Codec
from .envelope import build_headers
from .errors import (
    BusClosed,
    BusError,
    ConcurrencyError,
    NoStreamForSubject,
    PublishError,
    PublishTimeout,
)
from .events import Event, new_event_id
from .subjects import event_subject

WRONG_LAST_SEQUENCE = 10071  # JetStream err_code for a stale expected sequence


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


class Outgoing(msgspec.Struct, frozen=True):
    """One event ready for the wire."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    event_id: str


class Publisher:
    """Encodes events and sends them; translates every nats-py error into ours."""

    def __init__(self, nc: NATS, codec: Codec, timeout: float = 5.0, max_pending: int = 4096):
        self._nc = nc
        self._codec = codec
        self.timeout = timeout
        self._window = asyncio.Semaphore(max_pending)
        self._inbox: str | None = None
        self._batches: dict[str, _Batch] = {}
        self._batch_ids = itertools.count()

    def prepare(
        self,
        event: Event,
        aggregate_id: str,
        *,
        event_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Outgoing:
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        subject = event_subject(event.__domain__, aggregate_id, event.__event_name__)
        event_id = event_id or new_event_id()
        hdrs = build_headers(event, event_id, self._codec.mime, correlation_id, causation_id)
        if expected_version is not None:
            if expected_version < 0:
                raise ValueError("expected_version must be >= 0 (0: the aggregate is new)")
            hdrs[h.EXPECTED_LAST_SUBJECT_SEQ] = str(expected_version)
            hdrs[h.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = f"{event.__domain__}.{aggregate_id}.*"
        return Outgoing(subject, self._codec.encode(event), hdrs, event_id)

    async def send(self, out: Outgoing, timeout: float | None = None) -> PublishResult:
        """Publish one prepared event and wait for JetStream's ack."""
        timeout = self.timeout if timeout is None else timeout
        try:
            reply = await self._nc.request(out.subject, out.payload, timeout, headers=out.headers)
        except nats.errors.TimeoutError:
            raise PublishTimeout(out.subject, timeout) from None
        except nats.errors.NoRespondersError:
            raise NoStreamForSubject(out.subject) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise BusClosed("the connection is closed") from None
        except nats.errors.Error as exc:
            raise PublishError(out.subject, str(exc)) from None
        return _result(out, reply.data)

    async def send_many(
        self,
        outs: Sequence[Outgoing],
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[PublishResult | BusError]:
        """Publish all without waiting between them, then gather every ack (in order)."""
        if not outs:
            return []
        timeout = self.timeout if timeout is None else timeout
        inbox = await self._ack_inbox()
        batch_id = str(next(self._batch_ids))
        batch = _Batch(len(outs))
        self._batches[batch_id] = batch
        try:
            for i, out in enumerate(outs):
                await self._window.acquire()
                batch.sent += 1
                try:
                    await self._nc.publish(
                        out.subject, out.payload, f"{inbox}.{batch_id}.{i}", out.headers
                    )
                except nats.errors.Error as exc:
                    raise BusClosed(f"cannot publish: {exc}") from None
            await asyncio.wait_for(asyncio.shield(batch.done), timeout)
        except TimeoutError:
            missing = next(o.subject for o, r in zip(outs, batch.replies, strict=True) if r is None)
            raise PublishTimeout(missing, timeout) from None
        finally:
            del self._batches[batch_id]
            for _ in range(batch.sent - batch.acked):
                self._window.release()
        results: list[PublishResult | BusError] = []
        for out, data in zip(outs, batch.replies, strict=True):
            try:
                results.append(_result(out, data))
            except BusError as exc:
                if not return_exceptions:
                    raise
                results.append(exc)
        return results

    async def _ack_inbox(self) -> str:
        if self._inbox is None:
            self._inbox = self._nc.new_inbox()
            await self._nc.subscribe(f"{self._inbox}.>", cb=self._on_ack)
        return self._inbox

    async def _on_ack(self, msg: Msg) -> None:
        _, batch_id, index = msg.subject.rsplit(".", 2)
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # a late ack for a batch that already timed out
        i = int(index)
        if batch.replies[i] is None:
            no_stream = msg.headers is not None and msg.headers.get(h.STATUS) == "503"
            batch.replies[i] = _NO_RESPONDERS if no_stream else msg.data
            batch.acked += 1
            self._window.release()
            if batch.acked == len(batch.replies) and not batch.done.done():
                batch.done.set_result(None)


class _Batch:
    """Acks of one pipelined publish, gathered by index."""

    __slots__ = ("acked", "done", "replies", "sent")

    def __init__(self, size: int) -> None:
        self.replies: list[bytes | None] = [None] * size
        self.sent = 0
        self.acked = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


_NO_RESPONDERS = b'{"error":{"code":503,"description":"no responders"}}'


def _result(out: Outgoing, data: bytes) -> PublishResult:
    try:
        ack = _decode_ack(data)
    except msgspec.DecodeError:
        raise PublishError(out.subject, f"unreadable ack {data[:80]!r}") from None
    if ack.error is not None:
        err = ack.error
        if err.err_code == WRONG_LAST_SEQUENCE:
            raise ConcurrencyError(
                out.subject,
                int(out.headers[h.EXPECTED_LAST_SUBJECT_SEQ]),
                _trailing_int(err.description),
            )
        if err.code == 503:
            raise NoStreamForSubject(out.subject)
        raise PublishError(out.subject, err.description, err.err_code or err.code)
    return PublishResult(out.event_id, out.subject, ack.stream, ack.seq, ack.duplicate)


def _trailing_int(text: str) -> int | None:
    tail = text.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else None
