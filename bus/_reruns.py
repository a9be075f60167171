"""A handler's rerun (bus._followups): what it publishes again is found, not stored twice,
even after the target stream's duplicate window.

JetStream drops a repeated `Nats-Msg-Id` only within the stream's duplicate window (2 minutes
by default). A rerun of a handler usually comes well within it, and then costs nothing here,
but for an atomic batch: JetStream refuses one that holds a stored id, and the batch is then
looked for. When the handled message was stored longer ago than the target stream's window
(less the publish timeout and some clock slack), an earlier run's events may have been
forgotten by JetStream: each event is looked for on its own subject among the messages
stored since the handled message was (a batched direct get from that time, a bounded number
of pages), and one found is answered as a duplicate without being sent.

Cheaper than a record of every id published by a handler (a second write per event, for
every message, to serve the rare late rerun): this reads only for late reruns, and the
subject of a derived id is part of it, so only that subject's messages are read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import nats.errors

from . import _headers as h
from . import _telemetry as telemetry
from ._captured import capture_filter
from ._errors import (
    BusError,
    BusTimeout,
    ConcurrencyError,
    PublishError,
    StreamError,
    StreamNotFound,
)
from ._nats.acks import PublishResult
from ._nats.connection import Connection
from ._nats.wire import Outgoing
from ._reader import read_messages

log = logging.getLogger("bus.publish")

DUPLICATE_IN_BATCH = 10201  # JetStream err_code: an atomic batch holds a stored message id
PAGE = 256  # messages per direct get
MAX_SCAN = 16 * PAGE  # messages looked through on one subject at most; past it, publish
CLOCK_SLACK = 2.0  # seconds: the handled message's stamp and our clock may differ this much
WINDOW_TTL = 60.0  # seconds a stream's duplicate window is remembered


class _Names(msgspec.Struct):
    streams: list[str] | None = None


class _Config(msgspec.Struct):
    duplicate_window: int = 0  # nanoseconds


class _Info(msgspec.Struct):
    config: _Config = msgspec.field(default_factory=_Config)


_decode_names = msgspec.json.Decoder(_Names).decode
_decode_info = msgspec.json.Decoder(_Info).decode


SendMany = Callable[..., Awaitable[list[PublishResult | BusError]]]


class Reruns:
    """The publisher's way with a handler's rerun: what an earlier run of the handler stored
    already is answered as a duplicate instead of being stored again."""

    def __init__(self, nc: Connection, send_many: SendMany) -> None:
        self._nc, self._send_many = nc, send_many
        self._windows: dict[str, tuple[float, str, float]] = {}  # filter -> (until, stream, s)

    async def send(
        self, outs: Sequence[Outgoing], timeout: float, return_exceptions: bool
    ) -> list[PublishResult | BusError]:
        """Publish a rerun's events: what an earlier run stored (and the stream may have
        forgotten) is found, the rest sent. One refused for its expected version is looked
        for too: an earlier run's publish moved the version past it."""
        results: list[PublishResult | BusError | None] = [None] * len(outs)
        for i, found in (await self.stored(outs, timeout)).items():
            results[i] = found
            if outs[i].span is not None:
                telemetry.end_publish(outs[i].span, found.stream, found.seq)
        rest = [i for i, result in enumerate(results) if result is None]
        if rest:
            sent = await self._send_many([outs[i] for i in rest], timeout, True)
            for i, answer in zip(rest, sent, strict=True):
                results[i] = answer
        refused = [i for i, result in enumerate(results) if isinstance(result, ConcurrencyError)]
        if refused:
            stored = await self.stored([outs[i] for i in refused], timeout, always=True)
            for k, found in stored.items():
                results[refused[k]] = found
        if not return_exceptions:
            for result in results:
                if isinstance(result, BusError):
                    raise result
        return [r for r in results if r is not None]

    async def batch(self, outs: Sequence[Outgoing], timeout: float) -> list[PublishResult]:
        """A rerun's atomic batch as an earlier run stored it, when the stream may have
        forgotten its ids ([]: not stored)."""
        return self._whole(outs, await self.stored(outs, timeout), outs)

    async def refused(
        self, outs: Sequence[Outgoing], timeout: float, exc: BusError
    ) -> list[PublishResult]:
        """A rerun's atomic batch JetStream refused for holding a stored id: as the earlier
        run stored it ([]: refused for another reason). The commit's span ended refused."""
        if not (isinstance(exc, PublishError) and exc.code == DUPLICATE_IN_BATCH):
            return []
        return self._whole(outs, await self.stored(outs, timeout, always=True), outs[:-1])

    @staticmethod
    def _whole(
        outs: Sequence[Outgoing], found: dict[int, PublishResult], spans: Sequence[Outgoing]
    ) -> list[PublishResult]:
        """All of an atomic batch found, or none of it; a part is an error of the handler."""
        if not found:
            return []
        if len(found) < len(outs):
            raise PublishError(
                outs[0].subject,
                "an earlier run of this handler stored another atomic batch under these ids "
                "(a handler must publish the same events in the same order when it runs again)",
            )
        for i, out in enumerate(spans):
            if out.span is not None:
                telemetry.end_publish(out.span, found[i].stream, found[i].seq)
        return [found[i] for i in range(len(outs))]

    async def stored(
        self, outs: Sequence[Outgoing], timeout: float, *, always: bool = False
    ) -> dict[int, PublishResult]:
        """The events of `outs` (one rerun's) found in their streams, by index, as
        duplicates. Looked for only where the stream may have forgotten them, or `always`."""
        since = outs[0].rerun_since
        age = (time.time_ns() - since) / 1e9
        wanted: dict[str, dict[str, int]] = {}  # subject -> event id -> index in outs
        for i, out in enumerate(outs):
            wanted.setdefault(out.subject, {})[out.event_id] = i
        found: dict[int, PublishResult] = {}
        for subject, ids in wanted.items():
            stream, window = await self._window(subject, timeout)
            if always or age > window - timeout - CLOCK_SLACK:
                found |= await self._scan(stream, subject, since, ids, timeout)
        return found

    async def _scan(
        self, stream: str, subject: str, since: int, ids: dict[str, int], timeout: float
    ) -> dict[int, PublishResult]:
        start = since - int(CLOCK_SLACK * 1e9)
        try:
            page = await read_messages(
                self._nc, stream, 1, PAGE, subject, timeout, since=_rfc3339(start)
            )
        except StreamNotFound:  # (it was just found: no responders while it restarts)
            raise BusTimeout(f"{stream} did not answer a direct get") from None
        found: dict[int, PublishResult] = {}
        scanned = 0
        while True:
            for message in page:
                i = ids.pop(message.headers.get(h.MSG_ID, ""), None)
                if i is not None:
                    found[i] = PublishResult(
                        message.headers[h.MSG_ID], subject, stream, message.seq, duplicate=True
                    )
            scanned += len(page)
            if not ids or len(page) < PAGE:
                return found
            if scanned >= MAX_SCAN:
                log.warning(
                    "a rerun's events on %s: looked through %d messages without ruling out "
                    "an earlier run's; publishing them (they may be stored twice)",
                    subject, scanned,
                )  # fmt: skip
                return found
            page = await read_messages(self._nc, stream, page[-1].seq + 1, PAGE, subject, timeout)

    async def _window(self, subject: str, timeout: float) -> tuple[str, float]:
        """The stream capturing `subject` and its duplicate window (s), asked once a minute
        per event type."""
        key = capture_filter(subject)
        now = time.monotonic()
        known = self._windows.get(key)
        if known is not None and known[0] > now:
            return known[1], known[2]
        try:
            names = _decode_names(
                await self._ask("$JS.API.STREAM.NAMES", {"subject": subject}, timeout)
            )
            if not names.streams:
                raise StreamError(f"no stream captures {subject!r}")
            stream = names.streams[0]
            info = _decode_info(await self._ask(f"$JS.API.STREAM.INFO.{stream}", {}, timeout))
        except msgspec.DecodeError as exc:
            raise StreamError(f"the duplicate window of {subject!r}: {exc}") from None
        window = info.config.duplicate_window / 1e9
        self._windows[key] = (now + WINDOW_TTL, stream, window)
        return stream, window

    async def _ask(self, subject: str, request: dict[str, object], timeout: float) -> bytes:
        try:
            reply = await self._nc.request(subject, msgspec.json.encode(request), timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise BusTimeout(f"JetStream did not answer {subject} in {timeout:g}s") from None
        except nats.errors.Error as exc:
            raise StreamError(f"{subject}: {exc}") from None
        return bytes(reply.data)


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"
