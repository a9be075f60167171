"""The projector: folds stream batches into projection buckets, checkpoints, rebuilds.

Per batch it reads up to `batch_size` events by batched direct get, loads the touched keys'
records in one request, folds in memory, writes each changed key once (pipelined), then
records the checkpoint while the next batch is read (a checkpoint is sent only once its keys
are stored, one at a time). A key's record carries the last sequence applied to it, so after
a crash at any point the replayed events at or below it are skipped: nothing applies twice.
An event the projection cannot key or apply goes to the dead-letter stream, named after the
projection, and the projection goes on (its status counts the failures).

A rebuild fills a new generation from sequence 1 while queries read the current one; once
it has caught up, the live loop pauses for the last few events, one status write switches
generations, and the old bucket is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import nats.errors

from . import telemetry
from .client import Bus
from .deadletter import dead_letter_message
from .envelope import Envelope
from .errors import BusError, ConfigError, DecodeError
from .events import Event
from .feed import SharedReads, Tail
from .kv import ensure_bucket, kv_key
from .projection import META_BUCKET, Projection, ProjectionStatus, ProjectionView, Record
from .publish import Outgoing
from .reader import StoredMessage, read_last
from .subjects import matches

log = logging.getLogger("bus.projector")
IDLE_CHECK = 2.0  # seconds between looks at the stream when no wake-up arrived
CACHE_KEYS = 50_000  # records kept in memory between batches
KEYS_PER_READ = 256

Progress = Callable[[ProjectionStatus], None]
# (generation, position, the records the batch wrote): told once a batch's keys are stored
Applied = Callable[[int, int, dict[str, Record]], None]
_encode_status = msgspec.json.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(Record).decode


class _Generation:
    """One generation of one projection: its bucket, position and cached records."""

    def __init__(
        self, bus: Bus, shared: SharedReads, projection: Projection[Any], stream: str, number: int
    ) -> None:
        self.bus, self.projection, self.stream, self.number = bus, projection, stream, number
        self._shared = shared
        self.bucket = projection.bucket(number)
        self.position = 0
        self.lag = 0
        self.applied = 0
        self.written: dict[str, Record] = {}  # the last batch's records, as stored
        self.failures = 0
        self.last_error = ""
        self._cache: dict[str, Record] = {}
        # True while the cache holds every key of the bucket (it started empty here and was
        # never trimmed): a key not in it is new, and needs no read to find that out.
        self._complete = False
        # The batch being read ahead, and the sequence it starts from.
        self._next: tuple[int, asyncio.Task[list[StoredMessage]]] | None = None
        self._tail: Tail | None = None
        self._follow_after = 0.0  # loop time before which no tail is tried again
        self._decode = msgspec.msgpack.Decoder(projection.state).decode
        self._encode = msgspec.msgpack.Encoder().encode
        subjects = projection.subjects
        self._filter = subjects[0] if len(subjects) == 1 else None

    async def open(self) -> None:
        await ensure_bucket(self.bus.js, self.bucket, replicas=self.bus.replicas)
        info = await self.bus.js.stream_info(f"KV_{self.bucket}")
        self._complete = info.state.messages == 0

    async def follow(self, wake: asyncio.Event) -> None:
        """Once caught up: have new messages pushed (and `wake` set) instead of reading."""
        now = asyncio.get_running_loop().time()
        if self._tail is None and now >= self._follow_after:
            tail = Tail(self.bus, self.stream, self._filter, wake)
            if await tail.start(self.position):
                self._tail = tail
            else:  # JetStream refused (a consumer limit...): read, and try again later
                self._follow_after = now + IDLE_CHECK

    async def unfollow(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            await tail.stop()

    async def step(self) -> int:
        """Fold one batch; returns how many stream messages it took (0: caught up)."""
        projection = self.projection
        batch = await self._batch()
        if not batch:
            self.lag = 0
            return 0
        try:
            if telemetry.tracer() is None:
                applied = await self._fold(batch)
            else:
                headers = [m.headers for m in batch]
                with telemetry.processing(projection.name, self.stream, headers):
                    applied = await self._fold(batch)
        except BaseException:
            self.close()  # the retry must fold this batch again, not the one read ahead
            raise
        self.applied += applied
        self.position = batch[-1].seq
        self.lag = batch[-1].pending
        return len(batch)

    async def _batch(self) -> list[StoredMessage]:
        """The next batch: pushed, while a tail follows the stream; else read. While a full
        batch folds, the next one is already being read (replays overlap the server's work
        with ours)."""
        batch_size = self.projection.batch_size
        if self._tail is not None:
            if self._tail.following():
                return self._tail.take(self.position, batch_size)
            await self.unfollow()
        start, pending = self._next or (0, None)
        self._next = None
        if pending is not None and start != self.position + 1:  # a stale read-ahead
            pending.cancel()
            pending = None
        batch: list[StoredMessage] = await (pending or self._read(self.position + 1))
        if len(batch) == batch_size:
            after = batch[-1].seq + 1
            self._next = (after, asyncio.create_task(self._read(after)))
        return batch

    async def _fold(self, batch: list[StoredMessage]) -> int:
        """Apply a batch in memory and write each changed key once; returns events applied."""
        projection = self.projection
        keyed = await self._keyed(batch)
        if not self._complete:
            await self._load([key for _, _, key in keyed if key not in self._cache])
        changed: dict[str, tuple[int, Any]] = {}  # key -> (seq, state), encoded once at the end
        applied = 0
        for message, envelope, key in keyed:
            if key in changed:
                seq, state = changed[key]
            elif (record := self._cache.get(key)) is not None:
                seq, state = record.seq, self._decode(record.state)
            else:
                seq, state = 0, projection.initial()
            if seq >= message.seq:
                continue  # applied before a crash: skip, never twice
            try:
                state = projection.apply(state, envelope)
            except Exception as exc:
                await self._reject(message, f"apply failed: {type(exc).__name__}: {exc}")
                continue
            changed[key] = (message.seq, state)
            applied += 1
        await self._write({k: Record(seq, self._encode(st)) for k, (seq, st) in changed.items()})
        return applied

    def _read(self, from_seq: int) -> Any:
        return self._shared.read(self.stream, from_seq, self.projection.batch_size, self._filter)

    def close(self) -> None:
        """Forget what was read ahead or pushed: the next step reads from the position."""
        if self._next is not None:
            self._next[1].cancel()
            self._next = None
        if self._tail is not None:
            self._tail.broken = True

    async def _keyed(
        self, batch: Iterable[StoredMessage]
    ) -> list[tuple[StoredMessage, Envelope[Event], str]]:
        out = []
        for message in batch:
            if self._filter is None and not any(
                matches(s, message.subject) for s in self.projection.subjects
            ):
                continue
            try:
                envelope = self.bus.open(message)
            except DecodeError as exc:
                await self._reject(message, f"undecodable: {exc.reason}")
                continue
            try:
                key = self.projection.key(envelope)
            except Exception as exc:
                await self._reject(message, f"key failed: {type(exc).__name__}: {exc}")
                continue
            if key is not None:
                out.append((message, envelope, key))
        return out

    async def _load(self, keys: list[str]) -> None:
        """Fetch the records of keys not in memory, a few hundred per request."""
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), KEYS_PER_READ):
            chunk = unique[start : start + KEYS_PER_READ]
            subjects = [f"$KV.{self.bucket}.{kv_key(k)}" for k in chunk]
            found = await read_last(self.bus.nc, f"KV_{self.bucket}", subjects, len(chunk))
            by_subject = {m.subject: m.data for m in found if m.data}
            for key, subject in zip(chunk, subjects, strict=True):
                if subject in by_subject:
                    self._cache[key] = _decode_record(by_subject[subject])

    async def _write(self, changed: dict[str, Record]) -> None:
        self.written = {}
        if not changed:
            return
        encode = msgspec.msgpack.encode
        outs = [
            Outgoing(f"$KV.{self.bucket}.{kv_key(key)}", encode(record), {}, "")
            for key, record in changed.items()
        ]
        try:
            with telemetry.step(f"kv put {self.bucket}", **{"bus.kv.keys": len(outs)}):
                await self.bus.publisher.send_many(outs)
        except BaseException:
            self._complete = False  # some keys may be stored that the cache does not hold
            raise
        self._cache.update(changed)
        self.written = changed
        if len(self._cache) > CACHE_KEYS:  # memory stays bounded; misses read the bucket
            self._cache.clear()
            self._complete = False

    async def _reject(self, message: StoredMessage, reason: str) -> None:
        self.failures += 1
        self.last_error = reason[:500]
        out = dead_letter_message(
            self.stream,
            message.seq,
            message.subject,
            message.data,
            message.headers,
            f"projection:{self.projection.name}",
            reason,
        )
        with contextlib.suppress(BusError):  # the status shows the failure either way
            await self.bus.publisher.send(out)
        log.error(
            "projection %s: %s (%s #%d)", self.projection.name, reason, self.stream, message.seq
        )


class _Live:
    """A projection as the projector runs it: the generation queries read, and a rebuild."""

    def __init__(self, current: _Generation) -> None:
        self.current = current
        self.rebuild: _Generation | None = None
        self.switch: asyncio.Future[ProjectionStatus] | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.saving: asyncio.Task[ProjectionStatus] | None = None  # the checkpoint in flight


class Projector:
    """Runs projections on a Bus: `async with Projector(bus, [task, task_counts]): ...`

    `run(name)` and `halt(name)` start and stop one projection, for a service that runs
    only the projections whose lease it holds.
    """

    def __init__(self, bus: Bus, projections: Iterable[Projection[Any]]) -> None:
        self._bus = bus
        self.projections = {p.name: p for p in projections}
        self._live: dict[str, _Live] = {}
        self._shared = SharedReads(bus)
        self._observers: dict[str, list[Applied]] = {}

    def observe(self, name: str, observer: Applied) -> None:
        """Tell `observer` of every batch of `name` applied to the generation queries read,
        once its keys are stored and before its checkpoint is: a view in this process (`bus
        up`'s edge) learns of it a round trip sooner than from the checkpoint."""
        self._observers.setdefault(name, []).append(observer)

    @property
    def running(self) -> list[str]:
        return sorted(self._live)

    async def start(self) -> None:
        for name in self.projections:
            await self.run(name)

    async def run(self, name: str) -> None:
        """Resume `name` from its checkpoint (idempotent)."""
        if name in self._live:
            return
        projection = self.projections[name]
        await ensure_bucket(self._bus.js, META_BUCKET, replicas=self._bus.replicas)
        status = await ProjectionView(self._bus, projection).status()
        stream = status.stream or await self._bus.stream_for(projection.subjects[0])
        current = _Generation(self._bus, self._shared, projection, stream, status.generation)
        current.position = status.position
        current.applied, current.failures = status.applied, status.failures
        await current.open()
        live = self._live[name] = _Live(current)
        for subject in projection.subjects:  # a wake-up on every new event, no polling
            await self._shared.listen(subject, live.wake)
        live.task = asyncio.create_task(self._run(live), name=f"projection {name}")

    async def halt(self, name: str) -> None:
        """Stop folding `name` (its checkpoint stays where the last batch left it)."""
        live = self._live.pop(name, None)
        if live is None:
            return
        if live.task is not None:
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        live.current.close()
        await live.current.unfollow()
        if live.rebuild is not None:
            live.rebuild.close()
        await self._saved(live)  # a clean stop records where the last batch left off
        for subject in live.current.projection.subjects:
            await self._shared.unlisten(subject, live.wake)

    async def stop(self) -> None:
        for name in list(self._live):
            await self.halt(name)

    async def __aenter__(self) -> Projector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self, name: str) -> ProjectionStatus:
        """This process's view of a running projection (no round trip)."""
        live = self._live_for(name)
        return self._status(live)

    async def rebuild(self, name: str, progress: Progress | None = None) -> ProjectionStatus:
        """Fill a new generation from sequence 1, then switch queries to it."""
        live = self._live_for(name)
        if live.rebuild is not None:
            raise ConfigError(f"projection {name!r} is already rebuilding")
        current = live.current
        fresh = _Generation(
            self._bus, self._shared, current.projection, current.stream, current.number + 1
        )
        with contextlib.suppress(nats.errors.Error):  # leftovers of an interrupted rebuild
            await self._bus.js.delete_key_value(fresh.bucket)
        await fresh.open()
        live.rebuild = fresh
        with telemetry.step(f"rebuild {name}", **{"bus.projection.generation": fresh.number}):
            return await self._fill(live, fresh, progress)

    async def _fill(
        self, live: _Live, fresh: _Generation, progress: Progress | None
    ) -> ProjectionStatus:
        try:
            while await fresh.step():
                await self._checkpoint(live)
                if progress is not None:
                    progress(self._status(live))
                if fresh.position >= live.current.position:
                    break
            live.switch = asyncio.get_running_loop().create_future()
            live.wake.set()
            return await live.switch
        finally:
            live.rebuild = None
            live.switch = None

    def _live_for(self, name: str) -> _Live:
        try:
            return self._live[name]
        except KeyError:
            raise ConfigError(f"no projection named {name!r} runs here") from None

    async def _run(self, live: _Live) -> None:
        batch_size = live.current.projection.batch_size
        while True:
            if live.switch is not None and not live.switch.done():
                await self._switch(live)
            live.wake.clear()
            try:
                read = await live.current.step()
                if read:
                    current = live.current
                    for observer in self._observers.get(current.projection.name, ()):
                        observer(current.number, current.position, current.written)
                    await self._saved(live)  # one checkpoint in flight, written in order
                    live.saving = asyncio.create_task(
                        self._checkpoint(live), name=current.projection.name
                    )
            except BusError as exc:  # NATS away: try again shortly, nothing is lost
                log.warning("projection %s paused: %s", live.current.projection.name, exc)
                read = 0
            except Exception:  # a bug must not end the loop silently: log, retry later
                log.exception("projection %s: unexpected error", live.current.projection.name)
                read = 0
            if read < batch_size:
                with contextlib.suppress(BusError, nats.errors.Error):
                    await live.current.follow(live.wake)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_CHECK):
                        await live.wake.wait()

    async def _switch(self, live: _Live) -> None:
        """The live loop is paused here: finish the rebuild, flip, drop the old bucket."""
        fresh, switch = live.rebuild, live.switch
        assert fresh is not None
        assert switch is not None
        try:
            await self._saved(live)
            while await fresh.step():
                pass
            old, live.current = live.current, fresh
            await old.unfollow()
            live.rebuild = None
            status = await self._checkpoint(live)
            with contextlib.suppress(nats.errors.Error):
                await self._bus.js.delete_key_value(old.bucket)
            switch.set_result(status)
        except BusError as exc:
            switch.set_exception(exc)

    def _status(self, live: _Live) -> ProjectionStatus:
        current, fresh = live.current, live.rebuild
        return ProjectionStatus(
            name=current.projection.name,
            stream=current.stream,
            generation=current.number,
            position=current.position,
            applied=current.applied,
            failures=current.failures,
            last_error=current.last_error,
            rebuilding=fresh.number if fresh else 0,
            rebuild_position=fresh.position if fresh else 0,
            lag=current.lag,
        )

    async def _saved(self, live: _Live) -> None:
        """Wait for the checkpoint in flight: the next batch is read while it is written.

        One that failed is only logged: the next one covers it (keys carry their sequence,
        so a replay from an older checkpoint applies nothing twice)."""
        saving, live.saving = live.saving, None
        if saving is not None:
            try:
                await saving
            except BusError as exc:
                log.warning("projection %s: checkpoint not written: %s", saving.get_name(), exc)

    async def _checkpoint(self, live: _Live) -> ProjectionStatus:
        status = self._status(live)
        subject = f"$KV.{META_BUCKET}.{status.name}"
        await self._bus.publisher.send(Outgoing(subject, _encode_status(status), {}, ""))
        return status
