"""A projection view kept current in memory, for processes that query a lot (the edge).

Every write to a KV bucket is also a message on `$KV.<bucket>.<key>`. `LiveView` listens to
its projection's status and to the active generation's keys on direct lanes (no queue that
could drop), so:

- `wait_for(seq)` answers from the status in memory, woken by the projector's checkpoint,
  or sooner by a projector in the same process (`applied`); for a projection that reads
  some subjects of its stream, "has it seen `seq`?" takes a read by subject, which
  `expect(stream, seq)` starts as soon as this process has stored an event, so the
  read-your-writes query that follows finds the answer ready or under way;
- `get(key)` answers recently written or read keys from a bounded LRU without a round trip;
  a miss reads the bucket. The projector writes a batch's keys before its checkpoint, and one connection
  delivers them in that order, so a key read after `wait_for(seq)` already reflects `seq`.

A reconnect may have lost updates: the first call after one drops the cache and re-reads the
status. A generation switch (a rebuild finished) drops the cache and follows the new bucket.
What an instance that lost the projection still sends (JetStream refuses its writes, but the
messages reach subscribers) carries a lower fence than the status in memory and is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any, Generic, Self

import msgspec

from ._client import Bus
from ._coverage import Coverage
from ._errors import BusError, StreamNotFound
from ._kv import from_kv_key
from ._projection import (
    FENCE_KEY,
    META_BUCKET,
    RECHECK,
    Projection,
    ProjectionStatus,
    ProjectionView,
    Record,
    S,
    not_reached,
    read_records,
    seen,
)

_decode_record = msgspec.msgpack.Decoder(Record).decode
_decode_status = msgspec.json.Decoder(ProjectionStatus).decode


class LiveView(Generic[S]):
    """`ProjectionView`'s queries answered from memory where it is safe; bounded by `max_keys`."""

    def __init__(self, bus: Bus, projection: Projection[S], max_keys: int = 10_000) -> None:
        self._bus = bus
        self.projection = projection
        self.view = ProjectionView(bus, projection)
        self._max_keys = max_keys
        self._decode_state = msgspec.msgpack.Decoder(projection.state).decode
        self._status = ProjectionStatus(name=projection.name)
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._waiters: list[tuple[int, asyncio.Future[ProjectionStatus]]] = []
        self._epoch = -1  # the connection's reconnect count the memory is valid for
        self._status_lane: Any = None
        self._keys_lane: Any = None
        self._keys_prefix = b""
        self._following: asyncio.Task[None] | None = None
        self._coverage: Coverage | None = None
        # A stream sequence the projection is known to have seen past its position (no
        # event it reads up to it is unapplied), and the latest `expect`ed one.
        self._verified = self._wanted = 0
        self._checker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        nc = self._bus.nc
        subject = f"$KV.{META_BUCKET}.{self.projection.name}"
        self._status_lane = await nc.open_lane(subject, self._on_status)
        await self._follow(self._status.generation)
        await self._resync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._following, self._checker):
            if task is not None:
                task.cancel()
        for lane in (self._status_lane, self._keys_lane):
            if lane is not None:
                self._bus.nc.close_lane(lane)
                with contextlib.suppress(Exception):
                    await lane.unsubscribe()
        for _, waiter in self._waiters:
            waiter.cancel()

    @property
    def cached(self) -> int:
        """How many keys are held in memory (at most `max_keys`)."""
        return len(self._records)

    async def status(self) -> ProjectionStatus:
        await self._check_epoch()
        return self._status

    async def list(
        self, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[tuple[str, S]], str | None]:
        """Pages of keys, read from the bucket (see `ProjectionView.list`)."""
        return await self.view.list(prefix, limit, cursor)

    async def get(self, key: str) -> tuple[S, int] | None:
        """(state, last sequence applied) for `key`, or None if no event touched it."""
        await self._check_epoch()
        record = self._records.get(key)
        if record is None:
            record = await self._fetch(key)
            if record is None:
                return None
        else:
            self._records.move_to_end(key)
        return self._decode_state(record.state), record.seq

    async def wait_for(self, seq: int, timeout: float = 5.0) -> ProjectionStatus:
        """Return once the projection has seen stream sequence `seq` (every event up to it
        that it reads is applied)."""
        await self._check_epoch()
        try:
            async with asyncio.timeout(timeout):
                coverage = self._coverage = await self.view.coverage()
                checker = self._checker
                if checker is not None and self._wanted >= seq > self._seen():
                    await asyncio.wait([checker])  # the answer is under way: share it
                while (
                    target := await coverage.unapplied(self._bus, self._seen(), seq)
                ) is not None:
                    await self._until(target)
                    while self._status.position < target:  # slow: is it stored at all?
                        await coverage.check_stored(self._bus, target)
                        await self._until(target)
        except TimeoutError:
            raise not_reached(self.projection.name, seq, timeout) from None
        return seen(self._status, seq)

    def expect(self, stream: str, seq: int) -> None:
        """This process has just stored an event at `seq` of `stream`: for a projection
        reading some of its subjects, start finding out whether it has seen `seq` (one read
        in flight at a time, answering for every sequence asked meanwhile)."""
        coverage = self._coverage
        if coverage is None or coverage.reads_all or coverage.stream != stream:
            return
        self._wanted = max(self._wanted, seq)
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check(coverage))

    async def _check(self, coverage: Coverage) -> None:
        while (target := self._wanted) > self._seen():
            fence, generation = self._status.fence, self._status.generation
            try:
                if await coverage.unapplied(self._bus, self._seen(), target) is not None:
                    return  # an event it reads is still to apply: its checkpoint will tell
            except BusError:
                return  # the query asks again itself
            if (fence, generation) == (self._status.fence, self._status.generation):
                self._verified = max(self._verified, target)

    def _seen(self) -> int:
        return max(self._status.position, self._verified)

    async def _until(self, seq: int) -> None:
        """Wait for a status reaching `seq`; after RECHECK seconds without one, ask for it (a
        checkpoint lost to a reconnect). The task awaits the future itself, so it runs the
        loop turn after the status arrives (a shield and `wait_for` would add two)."""
        if self._status.position >= seq:
            return
        reached: asyncio.Future[ProjectionStatus] = asyncio.get_running_loop().create_future()
        entry = (seq, reached)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(RECHECK):
                await reached
            return
        except TimeoutError:
            pass
        finally:
            self._waiters.remove(entry)
        self._offer(await self.view.status())

    async def _fetch(self, key: str) -> Record | None:
        """The bucket's record, at least as fresh as the status in memory; an update that
        overtook the read stays (newer seq wins)."""
        for attempt in (1, 2):
            status = self._status
            bucket = self.projection.bucket(status.generation)
            try:
                found = await read_records(self._bus, bucket, [key], status.bucket_seq)
            except StreamNotFound:  # switched generations under us: once more
                if attempt == 2:
                    return None
                self._offer(await self.view.status())
                continue
            record = found.get(key)
            if record is None:
                return None
            if status.generation == self._status.generation:
                self._remember(key, record)
            return self._records.get(key, record)
        return None  # pragma: no cover

    def _remember(self, key: str, record: Record) -> None:
        """Keep the newer of what is cached and `record`; evict the least recently used."""
        held = self._records.get(key)
        if held is None or held.seq < record.seq:
            self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self._max_keys:
            self._records.popitem(last=False)

    def applied(self, generation: int, position: int, records: dict[str, Record]) -> None:
        """A projector in this process stored `records` and reached `position`
        (`Projector.observe`): waiters need not wait for the checkpoint to come back, and
        what they read next was acknowledged by the bucket, so it is stored."""
        if generation != self._status.generation:
            return  # a switch is learnt from its checkpoint, with the new bucket followed
        for key, record in records.items():
            self._remember(key, record)
        if position > self._status.position:
            self._offer(msgspec.structs.replace(self._status, position=position))

    def _on_key(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not subject.startswith(self._keys_prefix):
            return
        name = subject[len(self._keys_prefix) :].decode()
        if name == FENCE_KEY:
            return
        key = from_kv_key(name)
        if not data:  # a delete or purge
            self._records.pop(key, None)
            return
        record = _decode_record(data)
        if record.fence >= self._status.fence:  # recently written keys are the likeliest reads
            self._remember(key, record)

    def _on_status(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if data:
            with contextlib.suppress(msgspec.DecodeError):
                self._offer(_decode_status(data))

    def _offer(self, status: ProjectionStatus) -> None:
        current = self._status
        if status.fence < current.fence or status.generation < current.generation:
            return  # from an instance that lost the projection, or a retired generation
        if (status.generation, status.fence) != (current.generation, current.fence):
            self._verified = 0  # learnt of the instance and generation it no longer is
        if status.generation != current.generation:
            self._records.clear()
            self._following = asyncio.create_task(self._follow(status.generation))
        elif status.fence > current.fence:  # taken over: what the last writer sent may not
            self._records.clear()  # have been stored
        elif status.position < current.position:
            return  # an older checkpoint arriving late
        self._status = status
        for seq, waiter in self._waiters:
            if seq <= status.position and not waiter.done():
                waiter.set_result(status)

    async def _follow(self, generation: int) -> None:
        """Listen to `generation`'s keys instead of the previous one's."""
        bucket = self.projection.bucket(generation)
        self._keys_prefix = f"$KV.{bucket}.".encode()
        old, self._keys_lane = self._keys_lane, None
        if old is not None:
            self._bus.nc.close_lane(old)
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        self._keys_lane = await self._bus.nc.open_lane(f"$KV.{bucket}.>", self._on_key)

    async def _check_epoch(self) -> None:
        if self._bus.nc.reconnects != self._epoch:
            await self._resync()

    async def _resync(self) -> None:
        """Updates may have been missed: forget the keys, read the status again."""
        self._epoch = self._bus.nc.reconnects
        self._records.clear()
        self._verified = 0
        await self._bus.nc.flush()  # our lanes are registered before we read
        self._offer(await self.view.status())
