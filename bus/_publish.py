"""Publishing events to JetStream: one awaited, or many pipelined with their acks gathered.

Retrying a publish is always safe: the event id travels as `Nats-Msg-Id`, so JetStream stores
an event once within the stream's duplicate window and answers the retry with `duplicate`.
Inside a single-message handler the ids are derived from the handled message (bus._followups),
so a rerun of the handler is such a retry too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence

from . import _headers as h
from . import _telemetry as telemetry
from ._atomic import send_atomic
from ._captured import capture_filter, captured
from ._codec import Codec
from ._deadlines import Deadlines
from ._envelope import build_headers
from ._errors import BusClosed, BusError, ConfigError, PublishTimeout
from ._events import Event, new_event_id
from ._followups import Run, current_run
from ._nats.acks import NO_RESPONDERS, TOO_LARGE, PublishResult, read_ack
from ._nats.connection import Connection
from ._nats.wire import Outgoing, encode_headers
from ._reruns import Reruns
from ._subjects import validate_token
from ._telemetry import Telemetry

RETRY_AFTER = 1.0  # seconds without an ack before a publish is sent again
MAX_PAUSE = 0.1  # seconds between rounds while a stream is between leaders: its election ends
# at a moment nobody announces, and each pause is that much added to the failover
YIELD_EVERY = 256  # publishes buffered before the flusher gets a turn (server and us overlap)


class Publisher:
    """Encodes events and sends them; translates every failure into our errors.

    Acks come back on one inbox through the connection's direct lane: each published message
    has an integer token in its reply subject that finds its batch and slot. An awaited
    publish is a batch of one.
    """

    def __init__(
        self,
        nc: Connection,
        codec: Codec,
        telemetry: Telemetry,
        timeout: float = 5.0,
        max_pending: int = 4096,
    ) -> None:
        self._nc = nc
        self._codec = codec
        self._telemetry = telemetry
        self.timeout = timeout
        self._max_pending = max_pending  # publishes sent and not yet acknowledged, at most
        self._unacked = 0
        self._room: asyncio.Future[None] | None = None  # set when the window opens again
        self._inbox = ""
        self._waiting: dict[int, tuple[_Batch, int]] = {}
        self._tokens = itertools.count()
        self._deadlines = Deadlines()
        self._reruns = Reruns(nc, self.send_many)

    def prepare(
        self,
        event: Event,
        aggregate_id: str,
        *,
        event_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        trace_headers: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Outgoing:
        """The event ready for the wire; `trace_headers` (a batch span's context) replace the
        span of its own an event otherwise gets while tracing is on. Without an `event_id`,
        a handler's event gets one derived from its message, any other a new UUIDv7. `name`:
        the subject's last token, when not the event's own (bus.EventStore.append)."""
        subject, payload = self.encode(event, aggregate_id, name)
        run = current_run()
        if not event_id:
            event_id = new_event_id() if run is None else run.next_id(subject)
        hdrs = build_headers(event, event_id, self._codec.mime, correlation_id, causation_id)
        if expected_version is not None:
            if expected_version < 0:
                raise ValueError("expected_version must be >= 0 (0: the aggregate is new)")
            hdrs[h.EXPECTED_LAST_SUBJECT_SEQ] = str(expected_version)
            hdrs[h.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = f"{event.__domain__}.{aggregate_id}.*"
        return self._outgoing(event, subject, payload, event_id, hdrs, trace_headers, run)

    def encode(self, event: Event, aggregate_id: str, name: str | None = None) -> tuple[str, bytes]:
        """The event's subject and payload: what can be wrong with it shows here."""
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        if not (event.__domain__ and event.__event_name__):
            raise ConfigError(f"{type(event).__name__} needs __domain__ and __event_name__")
        # Domain and event name were validated when the class was made; only the id is new.
        validate_token(aggregate_id, "aggregate id")
        last = event.__event_name__ if name is None else validate_token(name, "event name")
        subject = f"{event.__domain__}.{aggregate_id}.{last}"
        return subject, self._codec.encode(event)

    async def publish_many(
        self,
        pairs: Sequence[tuple[Event, str]],
        trace_headers: dict[str, str] | None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[PublishResult | BusError]:
        """`send_many` of the events, each made ready as the send loop reaches it, so the
        server stores the first while the rest are made. Every event is encoded (and so
        checked) before any is sent: one that cannot be fails the call with nothing sent."""
        subjects: list[str] = []
        payloads: list[bytes] = []  # (two lists, not 20,000 tuples for the collector to scan)
        for event, aggregate_id in pairs:
            subject, payload = self.encode(event, aggregate_id)
            subjects.append(subject)
            payloads.append(payload)
        mime = self._codec.mime
        outs: list[Outgoing] = []
        run = current_run()  # (its ids are taken now: a handler's publishes count in order)
        ids = [run.next_id(subject) for subject in subjects] if run is not None else None

        def more() -> None:
            for event, _ in pairs[len(outs) : len(outs) + YIELD_EVERY]:
                n = len(outs)
                event_id = new_event_id() if ids is None else ids[n]
                hdrs = build_headers(event, event_id, mime)
                outs.append(
                    self._outgoing(
                        event, subjects[n], payloads[n], event_id, hdrs, trace_headers, run
                    )
                )

        if run is not None and run.rerun_since:
            while len(outs) < len(pairs):
                more()
            wait = self.timeout if timeout is None else timeout
            return await self._reruns.send(outs, wait, return_exceptions)
        return await self.send_many(outs, timeout, return_exceptions, total=len(pairs), more=more)

    async def send(self, out: Outgoing, timeout: float | None = None) -> PublishResult:
        """Publish one prepared event and wait for JetStream's ack: one try on a fast path
        first, then, if it was not answered (or "no responders"), `send_many`'s patience."""
        wait = self.timeout if timeout is None else timeout
        if out.rerun_since:
            result = (await self._reruns.send([out], wait, False))[0]
        else:
            started = time.perf_counter()
            if self._inbox and not (self._nc.is_closed or self._nc.is_draining):
                reply = (await self._attempt([out], [0], [None], min(RETRY_AFTER, wait), None))[0]
                if reply is not None and reply is not NO_RESPONDERS:
                    acked = [_read_ack(out, reply)]
                    self._report([out], acked, started)
                    if isinstance(acked[0], BusError):
                        raise acked[0]
                    return acked[0]
            left = max(0.0, wait - (time.perf_counter() - started))
            result = (await self.send_many([out], left))[0]
        assert isinstance(result, PublishResult)
        return result

    async def send_many(
        self,
        outs: Sequence[Outgoing],
        timeout: float | None = None,
        return_exceptions: bool = False,
        *,
        total: int | None = None,
        more: Callable[[], None] | None = None,
    ) -> list[PublishResult | BusError]:
        """Publish all without waiting between them, then gather every ack (in order).

        `more`, when given, adds the next few of `total` to `outs` (a list), as they are due."""
        total = len(outs) if total is None else total
        if not total:
            return []
        started = time.perf_counter()
        try:
            results = await self._send_many(outs, timeout, total, more)
        except BusError as exc:
            self._report(outs, [exc] * len(outs), started)
            raise
        self._report(outs, results, started)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BusError):
                    raise result
        return results

    async def _send_many(
        self,
        outs: Sequence[Outgoing],
        timeout: float | None,
        total: int,
        more: Callable[[], None] | None,
    ) -> list[PublishResult | BusError]:
        """Send, and send again what is not acknowledged within the timeout.

        A stream between leaders (its old one just died) answers "no responders", or nothing;
        a new leader is usually there within seconds. `Nats-Msg-Id` makes a repeat safe: one
        that was stored after all is answered as a duplicate, with its sequence.
        """
        if self._nc.is_closed or self._nc.is_draining:
            raise BusClosed("the connection is closed")
        timeout = self.timeout if timeout is None else timeout
        if not self._inbox:
            self._inbox = self._nc.new_inbox()
            await self._nc.open_lane(f"{self._inbox}.*", self._on_ack)
        blocks: list[bytes | None] = [None] * total  # header blocks, made once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        replies: list[bytes | None] = [None] * total
        todo = list(range(total))
        pause = 0.05
        while True:
            wait = min(max(RETRY_AFTER, timeout / 4), deadline - loop.time())
            got = await self._attempt(outs, todo, blocks, wait, more)
            for i, data in zip(todo, got, strict=True):
                replies[i] = data
            # An ack is final; so is "no responders" where no stream captures the subject.
            refused = {
                i: capture_filter(outs[i].subject) for i in todo if replies[i] is NO_RESPONDERS
            }
            led = (
                await captured(self._nc, set(refused.values()), deadline - loop.time())
                if refused
                else set()
            )
            todo = [i for i in todo if replies[i] is None or refused.get(i) in led]
            for i in todo:
                replies[i] = None  # if it stays so, the publish timed out
            if not todo or loop.time() + pause >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        while more is not None and len(outs) < total:  # (never sent: they timed out)
            more()
        return [
            _read_ack(out, data) if data is not None else PublishTimeout(out.subject, timeout)
            for out, data in zip(outs, replies, strict=True)
        ]

    async def _attempt(
        self,
        outs: Sequence[Outgoing],
        todo: list[int],
        blocks: list[bytes | None],
        wait: float,
        more: Callable[[], None] | None,
    ) -> list[bytes | None]:
        """Send `outs[i]` for each i in `todo` once; the acks that came within `wait`, in
        `todo`'s order (None where none did). A message the server could never take is
        refused here, alone, and never sent."""
        batch = _Batch(len(todo))
        self._deadlines.add(batch, wait)
        tokens: list[int] = []
        largest = self._nc.max_payload
        try:
            for k, i in enumerate(todo):
                if self._unacked >= self._max_pending:
                    await self._window_opens(batch.done)
                    if batch.done.done():
                        break  # its time is up
                elif k % YIELD_EVERY == YIELD_EVERY - 1:
                    self._nc.flush_soon()
                    await asyncio.sleep(0)
                while i >= len(outs) and more is not None:
                    more()
                out, block = outs[i], blocks[i]
                if block is None:
                    block = blocks[i] = encode_headers(out.headers) if out.headers else b""
                if len(block) + len(out.payload) > largest:
                    batch.settle(k, TOO_LARGE)
                    continue
                token = next(self._tokens)
                self._waiting[token] = (batch, k)
                self._unacked += 1
                tokens.append(token)
                self._nc.buffer(out.subject, out.payload, f"{self._inbox}.{token}", block)
            self._nc.flush_soon()
            await batch.done
        finally:
            self._deadlines.discard(batch)
            for token in tokens:
                if self._waiting.pop(token, None) is not None:
                    self._acked()  # never acked: free its window slot
        return batch.replies

    async def _window_opens(self, expired: asyncio.Future[None]) -> None:
        """Wait until half the window is acknowledged (not a wake-up per ack), or `expired`."""
        self._nc.flush_soon()
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        await asyncio.wait((self._room, expired), return_when=asyncio.FIRST_COMPLETED)

    def _acked(self) -> None:
        self._unacked -= 1
        if self._room is not None and self._unacked <= self._max_pending // 2:
            self._room.set_result(None)
            self._room = None

    async def send_atomic(
        self, outs: Sequence[Outgoing], timeout: float | None = None
    ) -> list[PublishResult]:
        """All or none, as one JetStream atomic batch (see bus._atomic)."""
        return await send_atomic(self, self._nc, self._reruns, outs, timeout)

    def _outgoing(
        self,
        event: Event,
        subject: str,
        payload: bytes,
        event_id: str,
        hdrs: dict[str, str],
        trace_headers: dict[str, str] | None,
        run: Run | None = None,
    ) -> Outgoing:
        """`trace_headers` (a batch span's context) replace the span of its own an event
        otherwise gets while tracing is on."""
        since = 0 if run is None else run.rerun_since
        if (protection := self._codec.protection) is not None:  # before the trace headers
            payload = protection.seal(subject, event_id, hdrs, payload)
        if trace_headers is not None:
            hdrs.update(trace_headers)
            return Outgoing(subject, payload, hdrs, event_id, None, since)
        span = self._telemetry.start_publish(template_of(event), event_id, hdrs, len(payload))
        return Outgoing(subject, payload, hdrs, event_id, span, since)

    def _report(
        self, outs: Sequence[Outgoing], results: Sequence[PublishResult | BusError], started: float
    ) -> None:
        """End the publish spans and count the outcomes (labels: stream, or the subject's domain)."""
        observer = self._telemetry.observer
        if observer is None and outs[0].span is None and outs[-1].span is None:
            return  # telemetry off: nothing to do per message
        counts: dict[tuple[str, str], int] = {}
        for out, result in zip(outs, results, strict=True):
            if isinstance(result, PublishResult):
                if out.span is not None:
                    telemetry.end_publish(out.span, result.stream, result.seq)
                key = (result.stream, "duplicate" if result.duplicate else "ok")
            else:
                if out.span is not None:
                    telemetry.end_publish(out.span, error=result)
                key = (out.subject.split(".", 1)[0], type(result).__name__)
            counts[key] = counts.get(key, 0) + 1
        if observer is not None:
            seconds = time.perf_counter() - started
            for (destination, outcome), count in counts.items():
                observer.published(destination, outcome, seconds, count)

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
        token = int(subject[subject.rfind(b".") + 1 :])
        waiting = self._waiting.pop(token, None)
        if waiting is None:
            return  # a late ack for a publish that already timed out
        self._acked()
        batch, i = waiting
        no_stream = raw is not None and raw[9:12] == b"503"
        batch.settle(i, NO_RESPONDERS if no_stream else data)


def _read_ack(out: Outgoing, data: bytes) -> PublishResult | BusError:
    try:
        return read_ack(out, data)
    except BusError as exc:
        return exc


def template_of(event: Event) -> str:
    """The subject with the id left out: span names and metrics never carry ids."""
    return f"{event.__domain__}.{{id}}.{event.__event_name__}"


class _Batch:
    """Acks of one publish call, gathered by index; `done` when all came or time is up."""

    __slots__ = ("acked", "done", "replies")

    def __init__(self, size: int) -> None:
        self.replies: list[bytes | None] = [None] * size
        self.acked = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, i: int, reply: bytes) -> None:
        self.replies[i] = reply
        self.acked += 1
        if self.acked == len(self.replies) and not self.done.done():
            self.done.set_result(None)

    def expire(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
