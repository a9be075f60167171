"""`EventStore`: an aggregate's events on its own subjects, `<domain>.<id>.*`, in the domain's
stream. Its version is the stream sequence of its last event (0: it does not exist yet).

    store = EventStore(bus)
    await store.append("tasks", "7f3c", [TaskCreated(title="x")], expected_version=0)
    history = await store.load("tasks", "7f3c")        # events and version
    async for envelope in store.read("TASKS", from_seq=1): ...   # catch up, then live

Appending several events is atomic (one JetStream atomic batch), and guarded by the expected
version of the first; loading reads only the aggregate's subjects (batched direct get). On a
replicated stream a load first asks the leader for the aggregate's last event, and reads on
until it has it: a follower that trails the leader never makes an aggregate look older.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

import msgspec

from ._atomic import MAX_ATOMIC_BATCH
from ._client import Bus
from ._envelope import Envelope
from ._errors import ConfigError
from ._events import Event
from ._nats.acks import PublishResult
from ._nats.direct import StoredMessage
from ._reader import STALE_PATIENCE, read_from_leader
from ._subjects import validate_token

PAGE = 256  # events per direct-get round trip when loading


class AppendResult(msgspec.Struct, frozen=True):
    """Where the events landed; `version` is the aggregate's new version."""

    stream: str
    version: int
    events: list[PublishResult]


class History(msgspec.Struct, frozen=True):
    """An aggregate's events after `since`, and its version (0 when it has none)."""

    events: list[Envelope[Event]]
    version: int
    messages_read: int


class EventStore:
    MAX_EVENTS = MAX_ATOMIC_BATCH  # in one append: JetStream's limit on an atomic batch

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    @property
    def bus(self) -> Bus:
        """The Bus it reads and appends through."""
        return self._bus

    @staticmethod
    def stream_of(domain: str) -> str:
        return validate_token(domain, "domain").upper()

    async def append(
        self,
        domain: str,
        aggregate_id: str,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> AppendResult:
        """Append all `events` or none; `expected_version=0` means "must not exist yet".

        A stale `expected_version` raises ConcurrencyError (expected and actual). `event_ids`
        (one per event; new ones if not given) make a repeated append refused by JetStream
        within the stream's duplicate window.
        """
        if not events:
            raise ConfigError("append needs at least one event")
        if event_ids is not None and len(event_ids) != len(events):
            raise ConfigError("append needs one event id per event")
        for event in events:
            if event.__domain__ != domain:
                raise ConfigError(f"{type(event).__name__} belongs to {event.__domain__!r}")
        publisher = self._bus.publisher
        if len(events) == 1:  # the common case, without the atomic batch's layers
            event_id = event_ids[0] if event_ids else None
            out = publisher.prepare(events[0], aggregate_id, event_id=event_id,
                                    correlation_id=correlation_id,
                                    expected_version=expected_version)  # fmt: skip
            result = await publisher.send(out)
            return AppendResult(result.stream, result.seq, [result])
        ids = event_ids if event_ids is not None else [None] * len(events)
        outs = [  # the expected version on the first guards the whole batch
            publisher.prepare(
                event,
                aggregate_id,
                event_id=event_id,
                correlation_id=correlation_id,
                expected_version=expected_version if i == 0 else None,
            )
            for i, (event, event_id) in enumerate(zip(events, ids, strict=True))
        ]
        results = await publisher.send_atomic(outs)
        return AppendResult(results[-1].stream, results[-1].seq, results)

    async def load(self, domain: str, aggregate_id: str, since: int = 0) -> History:
        """The aggregate's events with stream sequence > `since` (a snapshot's version)."""
        stream = self.stream_of(domain)
        subject = f"{domain}.{validate_token(aggregate_id, 'aggregate id')}.*"
        known = 0  # the sequence of its last event, as the leader has it
        if await self._bus.streams.replicated(stream):
            last = await read_from_leader(self._bus.nc, stream, last_by_subject=subject)
            known = last.seq if last else 0
        events: list[Envelope[Event]] = []
        read = 0
        next_seq = since + 1
        while True:
            page = await self._page(stream, next_seq, subject, known)
            read += len(page)
            events.extend(self._bus.open(m) for m in page)
            if len(page) < PAGE:
                break
            next_seq = page[-1].seq + 1
        version = (events[-1].seq or since) if events else since
        return History(events, version, read)

    async def _page(
        self, stream: str, from_seq: int, subject: str, known: int
    ) -> list[StoredMessage]:
        """Up to PAGE of the aggregate's events from `from_seq`, reaching `known` unless the
        page is full: a follower still catching up is asked again, then the leader is."""
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + STALE_PATIENCE, 0.002
        while True:
            page = await self._bus.read(stream, from_seq, PAGE, subject)
            if len(page) == PAGE or (page[-1].seq if page else from_seq - 1) >= known:
                return page
            if loop.time() + pause > give_up:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        out: list[StoredMessage] = []
        while len(out) < PAGE:
            found = await read_from_leader(
                self._bus.nc, stream, seq=from_seq, next_by_subject=subject
            )
            if found is None:
                break
            out.append(found)
            from_seq = found.seq + 1
        return out

    async def read(self, stream: str, from_seq: int = 1) -> AsyncGenerator[Envelope[Event], None]:
        """Every event from `from_seq` on, decoded, then live ones as they arrive."""
        tail = self._bus.tail(">", from_seq, stream=stream)
        async with contextlib.aclosing(tail) as messages:
            async for message in messages:
                yield self._bus.open(message)
