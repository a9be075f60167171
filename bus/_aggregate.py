"""Aggregates: a consistency boundary whose state is the fold of its own events.

    class TaskState(msgspec.Struct):
        title: str = ""
        status: str = "new"

    class Task(Aggregate[TaskState]):
        __domain__ = "tasks"
        State = TaskState

        @staticmethod
        def evolve(state: TaskState, event: Event) -> TaskState:   # pure
            match event:
                case TaskCreated(title=title):
                    return msgspec.structs.replace(state, title=title, status="created")
            return state

        def create(self, title: str) -> None:                      # a command decides
            if self.version:
                raise ValueError("exists already")
            self.record(TaskCreated(title=title))

    tasks = Repository(bus, Task, snapshot_every=100)
    await tasks.update("7f3c", lambda task: task.create("write docs"))  # retried on conflict

Snapshots are a cache in a KV bucket (`snapshots_<domain>`): `get` starts from the latest one
and folds only the events after it, so it always equals a full replay.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import nats.errors
from nats.js.kv import KeyValue

from ._client import Bus
from ._errors import ConcurrencyError, ConfigError
from ._events import Event
from ._kv import ensure_bucket, kv_key
from ._store import AppendResult, EventStore

log = logging.getLogger("bus.aggregate")
S = TypeVar("S", bound=msgspec.Struct)
A = TypeVar("A", bound="Aggregate[Any]")


class Aggregate(Generic[S]):
    """Subclass with `__domain__`, a `State` Struct, a pure `evolve` and command methods."""

    __domain__: ClassVar[str]
    State: ClassVar[type[Any]]
    snapshot_version: ClassVar[int] = 1  # bump when State changes shape: old snapshots are skipped

    def __init__(self, aggregate_id: str, state: S | None = None, version: int = 0) -> None:
        self.id = aggregate_id
        self.state: S = state if state is not None else self.State()
        self.version = version  # stream sequence of the last stored event; 0 if none
        self.pending: list[Event] = []
        self.replayed = 0  # events folded by the last load (fewer with a snapshot)
        self.since_snapshot = 0  # events folded or saved since the last snapshot

    @staticmethod
    def evolve(state: Any, event: Event) -> Any:
        raise NotImplementedError("an Aggregate defines evolve(state, event) -> state")

    def record(self, event: Event) -> None:
        """Decide: apply the new event to the state now, and keep it to be saved."""
        self.state = self.evolve(self.state, event)
        self.pending.append(event)


class _Snapshot(msgspec.Struct):
    version: int
    schema: str
    state: bytes


class Repository(Generic[A]):
    """Loads and saves one aggregate type through an EventStore, with optional snapshots."""

    def __init__(self, bus: Bus, aggregate: type[A], *, snapshot_every: int = 0) -> None:
        if not getattr(aggregate, "__domain__", None) or not hasattr(aggregate, "State"):
            raise ConfigError(f"{aggregate.__name__} needs __domain__ and a State Struct")
        if snapshot_every < 0:
            raise ConfigError("snapshot_every must be >= 0 (0: no snapshots)")
        self._bus = bus
        self._store = EventStore(bus)
        self._type = aggregate
        self.snapshot_every = snapshot_every
        self._schema = f"{aggregate.State.__qualname__}:{aggregate.snapshot_version}"
        self._kv: KeyValue | None = None

    async def get(self, aggregate_id: str) -> A:
        """The aggregate as its events make it now (a new, empty one if it has none)."""
        agg = self._type(aggregate_id)
        snapshot = await self._read_snapshot(aggregate_id)
        if snapshot is not None:
            agg.state = msgspec.msgpack.decode(snapshot.state, type=self._type.State)
            agg.version = snapshot.version
        history = await self._store.load(self._type.__domain__, aggregate_id, agg.version)
        for envelope in history.events:
            agg.state = agg.evolve(agg.state, envelope.event)
        agg.version = history.version
        agg.replayed = len(history.events)
        agg.since_snapshot = len(history.events)
        return agg

    async def save(self, agg: A) -> AppendResult | None:
        """Append the pending events at the version the aggregate was loaded at."""
        if not agg.pending:
            return None
        result = await self._store.append(
            self._type.__domain__, agg.id, agg.pending, expected_version=agg.version
        )
        agg.since_snapshot += len(agg.pending)
        agg.pending = []
        agg.version = result.version
        if self.snapshot_every and agg.since_snapshot >= self.snapshot_every:
            await self._write_snapshot(agg)
        return result

    async def update(
        self,
        aggregate_id: str,
        command: Callable[[A], Awaitable[None] | None],
        *,
        retries: int = 3,
    ) -> A:
        """Load, run `command`, save; on a concurrent change, reload and run it again."""
        for attempt in range(retries + 1):
            agg = await self.get(aggregate_id)
            outcome = command(agg)
            if inspect.isawaitable(outcome):
                await outcome
            try:
                await self.save(agg)
            except ConcurrencyError:
                if attempt == retries:
                    raise
                continue
            return agg
        raise AssertionError("unreachable")  # pragma: no cover

    # -- snapshots ----------------------------------------------------------------------------

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await ensure_bucket(
                self._bus.js, f"snapshots_{self._type.__domain__}", replicas=self._bus.replicas
            )
        return self._kv

    async def _read_snapshot(self, aggregate_id: str) -> _Snapshot | None:
        if not self.snapshot_every:
            return None
        try:
            entry = await (await self._bucket()).get(kv_key(aggregate_id))
            snapshot = msgspec.msgpack.decode(entry.value or b"", type=_Snapshot)
        except (nats.errors.Error, msgspec.DecodeError):  # missing or unreadable: replay all
            return None
        return snapshot if snapshot.schema == self._schema else None

    async def _write_snapshot(self, agg: A) -> None:
        snapshot = _Snapshot(agg.version, self._schema, msgspec.msgpack.encode(agg.state))
        try:
            await (await self._bucket()).put(kv_key(agg.id), msgspec.msgpack.encode(snapshot))
        except nats.errors.Error as exc:  # a cache: the events stay the truth
            log.warning("snapshot of %s %s not written: %s", self._type.__name__, agg.id, exc)
            return
        agg.since_snapshot = 0
