"""Projections: read models folded from streams, and how to query them.

    class TaskView(msgspec.Struct):
        status: str = "new"
        title: str = ""

    def apply(view: TaskView, envelope: Envelope) -> TaskView:     # pure
        match envelope.event:
            case TaskCreated(title=title):
                return msgspec.structs.replace(view, status="created", title=title)
        return view

    task = Projection("task", subjects=("tasks.>",), state=TaskView,
                      key=lambda envelope: envelope.subject.split(".")[1], apply=apply)

State lives in a KV bucket per projection and generation (`proj_<name>_<generation>`), one
entry per key holding the state and the last stream sequence applied to it. The projector's
checkpoint and status live in the `bus_projections` bucket under the projection's name: the
one record that says which generation queries read and how far it has got.

Positions are stream sequences: how far the projection has seen its stream, the events it
does not read included (bus.coverage), so `wait_for(seq)` answers for any event of it.

Each bucket also holds a fence (`FENCE_KEY`): the instance running the projection writes it
when it takes the projection over, and writes its keys only while the fence is the one it
wrote, so an instance that lost the projection (paused past its lease) can write nothing.
Reads that must be fresh ask for at least the sequence the checkpoint says the bucket had.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors

from ._client import Bus
from ._coverage import Coverage
from ._envelope import Envelope
from ._errors import BusTimeout, ConfigError, StreamNotFound
from ._events import Event
from ._kv import from_kv_key, kv_key
from ._nats.direct import StoredMessage
from ._reader import read_from_leader, read_last, read_messages
from ._subjects import validate_pattern, validate_token

S = TypeVar("S")
META_BUCKET = "bus_projections"
FENCE_KEY = "b64.fence"  # a key kv_key never makes (five base64 characters encode nothing)
SCAN_PAGE = 1000
RECHECK = 0.5  # seconds between re-reads of the status while waiting


@dataclass(frozen=True)
class Projection(Generic[S]):
    """A name, source subjects, a key per event (None: not for us), and a pure fold."""

    name: str
    subjects: tuple[str, ...]
    state: type[S]
    key: Callable[[Envelope[Event]], str | None]
    apply: Callable[[S, Envelope[Event]], S]
    batch_size: int = 500

    def __post_init__(self) -> None:
        validate_token(self.name, "projection name")
        if "-" in self.name or not self.name.replace("_", "a").isalnum():
            raise ConfigError(f"projection name {self.name!r}: letters, digits and _ only")
        if isinstance(self.subjects, str) or not self.subjects:
            raise ConfigError(f"projection {self.name!r} needs a sequence of subjects")
        for subject in self.subjects:
            validate_pattern(subject)
        if not 1 <= self.batch_size <= 10_000:
            raise ConfigError("batch_size must be between 1 and 10000")

    def bucket(self, generation: int) -> str:
        return f"proj_{self.name}_{generation}"

    def initial(self) -> S:
        return self.state()


class Record(msgspec.Struct, array_like=True):
    """One key's entry: the last stream sequence applied, the encoded state, and the fence
    of the instance that wrote it (see ProjectionStatus.fence)."""

    seq: int
    state: bytes
    fence: int = 0


class ProjectionStatus(msgspec.Struct, kw_only=True):
    """The checkpoint and health of a projection, as the projector last wrote them."""

    name: str
    stream: str = ""
    generation: int = 1
    position: int = 0  # every event up to here is applied
    applied: int = 0
    failures: int = 0
    last_error: str = ""
    rebuilding: int = 0  # the generation being filled, 0 when none
    rebuild_position: int = 0
    lag: int = 0  # matching events stored after `position`, at the last checkpoint
    # Which instance writes: the revision of the checkpoint it wrote on taking over, higher
    # for each takeover. Views ignore what an instance with a lower fence still sends.
    fence: int = 0
    bucket_seq: int = 0  # the generation bucket's last stored sequence at this checkpoint


def not_reached(name: str, seq: int, timeout: float) -> BusTimeout:
    return BusTimeout(f"projection {name!r} did not reach {seq} in {timeout:g}s")


_decode_record = msgspec.msgpack.Decoder(Record).decode
_decode_status = msgspec.json.Decoder(ProjectionStatus).decode


class ProjectionView(Generic[S]):
    """Queries on a projection's current generation; `wait_for` gives read-your-writes."""

    def __init__(self, bus: Bus, projection: Projection[S]) -> None:
        self._bus = bus
        self.projection = projection
        self._decode_state = msgspec.msgpack.Decoder(projection.state).decode
        self._coverage: Coverage | None = None
        # The newest checkpoint seen, stored or on its way (a checkpoint arrives here as it is
        # sent, before JetStream has stored it): what a key read must be at least as fresh as.
        self._newest = ProjectionStatus(name=projection.name)

    async def status(self) -> ProjectionStatus:
        """The last checkpoint (from the leader on a replicated bucket: what a read of the
        projection's keys then asks of a replica must be at least that recent)."""
        subject, stream = f"$KV.{META_BUCKET}.{self.projection.name}", f"KV_{META_BUCKET}"
        try:
            if await self._bus.streams.replicated(stream):
                found = await read_from_leader(self._bus.nc, stream, last_by_subject=subject)
            else:
                found = next(iter(await read_last(self._bus.nc, stream, [subject], 1)), None)
        except StreamNotFound:
            found = None
        if found is None or not found.data:
            return ProjectionStatus(name=self.projection.name)
        return self._noted(_decode_status(found.data))

    def _noted(self, status: ProjectionStatus) -> ProjectionStatus:
        newest = self._newest
        if (status.generation, status.bucket_seq) > (newest.generation, newest.bucket_seq):
            self._newest = status
        return status

    async def coverage(self) -> Coverage:
        """The projection's stream and what it reads of it (looked up once)."""
        if self._coverage is None:
            stream = (await self.status()).stream
            stream = stream or await self._bus.stream_for(self.projection.subjects[0])
            self._coverage = await Coverage.of(self._bus, stream, self.projection.subjects)
        return self._coverage

    async def get(self, key: str) -> tuple[S, int] | None:
        """(state, last sequence applied) for `key`, or None if no event touched it."""
        for attempt in (1, 2):
            await self.status()
            status = self._newest
            bucket = self.projection.bucket(status.generation)
            try:
                found = await read_records(self._bus, bucket, [key], status.bucket_seq)
            except StreamNotFound:  # switched generations under us: once more
                if attempt == 2:
                    return None
                continue
            record = found.get(key)
            return None if record is None else (self._decode_state(record.state), record.seq)
        return None  # pragma: no cover

    async def list(
        self, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[builtins.list[tuple[str, S]], str | None]:
        """Keys in order, from after `cursor`; returns the page and the next cursor (or None).

        Reads the whole generation (one record per key) in pages: fine for read models of
        thousands of keys; an ordered index is future work. Pages come from any replica, so
        on a replicated bucket they may trail the last checkpoint by a moment.
        """
        if not 1 <= limit <= 1000:
            raise ConfigError("limit must be between 1 and 1000")
        records: builtins.list[tuple[str, Record]] = []
        for attempt in (1, 2):
            bucket = self.projection.bucket((await self.status()).generation)
            try:
                records = await self._scan(bucket)
                break
            except StreamNotFound:  # switched generations under us: once more
                if attempt == 2:
                    records = []
        keys = sorted(
            (k, r) for k, r in records if k.startswith(prefix) and (cursor is None or k > cursor)
        )
        page = keys[:limit]
        next_cursor = page[-1][0] if len(keys) > limit else None
        return [(k, self._decode_state(r.state)) for k, r in page], next_cursor

    async def _scan(self, bucket: str) -> builtins.list[tuple[str, Record]]:
        out: builtins.list[tuple[str, Record]] = []
        next_seq = 1
        while True:
            page = await read_messages(self._bus.nc, f"KV_{bucket}", next_seq, SCAN_PAGE)
            out.extend(_records(bucket, page).items())
            if len(page) < SCAN_PAGE:
                return out
            next_seq = page[-1].seq + 1

    async def wait_for(self, seq: int, timeout: float = 5.0) -> ProjectionStatus:
        """Return once the projection has seen stream sequence `seq`: every event up to it
        that it reads is applied (the events it does not read need nothing)."""
        try:
            async with asyncio.timeout(timeout):
                coverage = await self.coverage()
                status = await self.status()
                while (
                    target := await coverage.unapplied(self._bus, status.position, seq)
                ) is not None:
                    status = await self._reach(target, coverage)
        except TimeoutError:
            raise not_reached(self.projection.name, seq, timeout) from None
        return seen(status, seq)

    async def _reach(self, seq: int, coverage: Coverage) -> ProjectionStatus:
        """The status once its position is at least `seq` (BeyondStreamEnd if, slow to come,
        `seq` turns out not to be stored at all).

        No polling loop: each checkpoint the projector writes arrives here as a message and
        carries the new status itself (reading the bucket right after could still see the
        previous value). A re-read every RECHECK seconds covers a checkpoint written just
        before the subscription existed.
        """
        reached: asyncio.Future[ProjectionStatus] = asyncio.get_running_loop().create_future()

        def offer(status: ProjectionStatus) -> None:
            if status.position >= seq and not reached.done():
                reached.set_result(status)

        async def on_update(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                offer(self._noted(_decode_status(msg.data)))

        sub = await self._bus.nc.subscribe(
            f"$KV.{META_BUCKET}.{self.projection.name}", cb=on_update
        )
        try:
            await self._bus.nc.flush()  # the server has our interest before we read the status
            while True:
                offer(await self.status())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reached), RECHECK)
                if reached.done():
                    return reached.result()
                await coverage.check_stored(self._bus, seq)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


def seen(status: ProjectionStatus, seq: int) -> ProjectionStatus:
    """`status` as of having seen `seq` (the events between that it reads are applied)."""
    if status.position >= seq:
        return status
    return msgspec.structs.replace(status, position=seq)


async def read_records(bus: Bus, bucket: str, keys: list[str], at_least: int) -> dict[str, Record]:
    """The stored records of `keys`, never older than the bucket's sequence `at_least` (the
    fence rides along: a replica's answer is then never empty and says how far it is)."""
    prefix = f"$KV.{bucket}."
    subjects = [prefix + kv_key(key) for key in keys]
    if at_least:
        subjects.append(prefix + FENCE_KEY)
    found = await read_last(bus.nc, f"KV_{bucket}", subjects, len(subjects), at_least=at_least)
    return _records(bucket, found)


def _records(bucket: str, messages: Iterable[StoredMessage]) -> dict[str, Record]:
    """The keys' records among stored bucket messages (not the fence, nor deleted keys)."""
    cut = len(f"$KV.{bucket}.")
    return {
        from_kv_key(m.subject[cut:]): _decode_record(m.data)
        for m in messages
        if m.data and m.subject[cut:] != FENCE_KEY
    }
