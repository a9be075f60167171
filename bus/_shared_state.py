"""Shared state with compare-and-set: `bus.bucket("settings")`, a handle on a bucket the App
declares (JetStream KV), created by the Bus at start with the Bus's replicas.

    settings = bus.bucket("settings")
    entry = await settings.get("limits")            # KeyEntry(value, revision) or None
    await settings.update("limits", {...}, revision=entry.revision)   # RevisionMismatch if not
    await settings.modify("hits", lambda n: (n or 0) + 1)             # re-reads, retries

Every write is conditional where it says so, checked by the stream leader
(`Nats-Expected-Last-Subject-Sequence`), and carries a fresh `Nats-Msg-Id` so the
publisher's own retry of it is stored once. The reads a compare-and-set relies on (`get`,
and `modify`'s) come from the leader on a replicated bucket: never older than an
acknowledged write. Writes go through the publisher's fast lane, traced and counted as
publishes (span `publish $KV.<bucket>.{key}`, its context stored with the value).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext

from . import _headers as h
from ._buckets import MAX_HISTORY, BucketSpec, KeyEntry, KeyPage, Operation, validate_key
from ._errors import (
    BusTimeout,
    ConcurrencyError,
    ConfigError,
    DecodeError,
    KeyExists,
    KeyNotFound,
    NoStreamForSubject,
    RevisionMismatch,
    StreamError,
    StreamNotFound,
)
from ._events import new_event_id
from ._kv import ensure_bucket
from ._nats.connection import Connection
from ._nats.direct import StoredMessage
from ._nats.wire import Outgoing
from ._publish import Publisher
from ._reader import STREAM_NOT_FOUND, read_from_leader, read_last, read_messages
from ._streams import StreamManager
from ._tail import messages_on
from ._telemetry import Telemetry

T = TypeVar("T")
ROUNDS = 5  # conditional writes tried while others change a key under a create or delete
ATTEMPTS = 100  # read-change-write rounds `modify` tries before giving up
MAX_PAGE = 1000  # keys per listing page
MAX_REVISION = 2**63  # past any stream sequence (JetStream refuses reads from beyond)
_OPERATIONS: dict[str, Operation] = {"DEL": "delete", "PURGE": "purge"}
_encode = msgspec.json.Encoder().encode


class _Host(Protocol):
    """What a handle uses of its Bus (which imports this module, so it is not named)."""

    replicas: int
    telemetry: Telemetry

    @property
    def nc(self) -> Connection: ...
    @property
    def js(self) -> JetStreamContext: ...
    @property
    def publisher(self) -> Publisher: ...
    @property
    def streams(self) -> StreamManager: ...


class Bucket(Generic[T]):
    """A declared bucket: JSON values by key, each write a new revision."""

    def __init__(self, host: _Host, spec: BucketSpec) -> None:
        self._host = host
        self.spec = spec
        self.name = spec.name
        self._subject = f"$KV.{spec.name}."
        self._template = f"$KV.{spec.name}.{{key}}"  # span names carry no key
        self._decode = msgspec.json.Decoder(spec.value_type).decode

    async def ensure(self) -> None:
        """Create the bucket if it is missing (an existing one is kept as it is)."""
        spec = self.spec
        try:
            await ensure_bucket(
                self._host.js,
                spec.name,
                history=spec.history,
                ttl=spec.ttl,
                replicas=self._host.replicas,
            )
        except nats.errors.Error as exc:
            raise StreamError(f"key-value bucket {spec.name!r}: {exc}") from None

    def convert(self, value: Any) -> T:
        """`value` (decoded JSON) as the bucket's value type; DecodeError if it is not one."""
        try:
            return msgspec.convert(value, self.spec.value_type)  # type: ignore[no-any-return]
        except msgspec.ValidationError as exc:
            raise DecodeError(str(exc), self.name) from None

    # -- reads --------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyEntry[T] | None:
        """The key's value and revision (None: absent or deleted); fresh on replicated buckets."""
        last = await self._last(validate_key(key))
        return last if last is not None and last.operation == "put" else None

    async def history(self, key: str) -> list[KeyEntry[T]]:
        """The revisions the bucket keeps of `key`, oldest first, deletions included."""
        found = await read_messages(
            self._host.nc, self.spec.stream, 1, MAX_HISTORY, self._subject + validate_key(key)
        )
        return [self._entry(m) for m in found]

    async def keys(
        self, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> KeyPage[T]:
        """Live keys starting with `prefix`, in key order, with their values: up to `limit`
        after `cursor` (the previous page's `next_cursor`)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be 1 to {MAX_PAGE}")
        if prefix:
            validate_key(prefix[:-1] if prefix.endswith(".") else prefix)
        if cursor is not None:
            validate_key(cursor)
        scope, _, _ = prefix.rpartition(".")  # whole tokens narrow what the server lists
        filter_ = self._subject + (f"{scope}.>" if scope else ">")
        names = sorted(s[len(self._subject) :] for s in await self._subjects(filter_))
        keys = [k for k in names if k.startswith(prefix) and (cursor is None or k > cursor)]
        chosen = keys[:limit]
        found: dict[str, KeyEntry[T]] = {}
        if chosen:
            subjects = [self._subject + k for k in chosen]
            for message in await read_last(self._host.nc, self.spec.stream, subjects, limit):
                entry = self._entry(message)
                found[entry.key] = entry
        items = [found[k] for k in chosen if k in found and found[k].operation == "put"]
        return KeyPage(items, chosen[-1] if len(keys) > limit else None)

    def watch(
        self, key: str = ">", *, after_revision: int | None = None
    ) -> AsyncGenerator[KeyEntry[T], None]:
        """Every change of `key` (wildcards `*` and a last `>` allowed) in order, deletions
        included: after `after_revision` when given, else from now on. Reads at the
        caller's pace, a page at a time: a reader more than the bucket's `history` writes
        behind on one key finds the older of them gone (a key keeps that many). The key
        is checked here, before the first change is awaited."""
        subject = self._subject + validate_key(key, pattern=True)
        if after_revision is not None and not 0 <= after_revision < MAX_REVISION:
            raise ConfigError(f"after_revision must be 0 to {MAX_REVISION - 1}")
        return self._follow(subject, after_revision)

    async def _follow(
        self, subject: str, after_revision: int | None
    ) -> AsyncGenerator[KeyEntry[T], None]:
        if after_revision is None:
            after_revision = (await self._host.streams.info(self.spec.stream)).last_seq
        follow = messages_on(
            self._host.nc, self.spec.stream, subject, [subject], after_revision + 1
        )
        async with contextlib.aclosing(follow) as messages:
            async for message in messages:
                yield self._entry(message)

    # -- writes -------------------------------------------------------------------------------

    async def put(self, key: str, value: T) -> int:
        """Write `value` whatever is there; returns the new revision."""
        revision = await self._write(validate_key(key), _encode(value), None)
        assert revision is not None  # unconditional
        return revision

    async def create(self, key: str, value: T) -> int:
        """Write `value` only if the key is absent (or deleted); KeyExists otherwise."""
        payload, expected = _encode(value), 0
        for _ in range(ROUNDS):
            revision = await self._write(validate_key(key), payload, expected)
            if revision is not None:
                return revision
            last = await self._last(key)
            if last is not None and last.operation == "put":
                raise KeyExists(self.name, key, last.revision)
            expected = 0 if last is None else last.revision  # over a deletion marker
        raise KeyExists(self.name, key, await self._current(key))

    async def update(self, key: str, value: T, *, revision: int) -> int:
        """Write `value` only if the key is at `revision`; RevisionMismatch (with the
        current revision) otherwise. Returns the new revision."""
        if revision < 1:
            raise ConfigError("revision must be >= 1 (create() writes an absent key)")
        written = await self._write(validate_key(key), _encode(value), revision)
        if written is None:
            raise RevisionMismatch(self.name, key, revision, await self._current(key))
        return written

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Delete the key (only at `revision`, when given); KeyNotFound if it is absent,
        RevisionMismatch if it is not at `revision`. History keeps the deletion."""
        validate_key(key)
        for _ in range(ROUNDS if revision is None else 1):
            expected = revision
            if expected is None:
                last = await self._last(key)
                if last is None or last.operation != "put":
                    raise KeyNotFound(self.name, key)
                expected = last.revision
            deleted = await self._write(key, b"", expected, "DEL")
            if deleted is not None:
                return deleted
        current = await self._current(key)
        if revision is None and not current:
            raise KeyNotFound(self.name, key)
        raise RevisionMismatch(self.name, key, revision or 0, current)

    async def modify(
        self, key: str, change: Callable[[T | None], T], *, attempts: int = ATTEMPTS
    ) -> KeyEntry[T]:
        """Read the key (None: absent), write `change(value)` on condition that nobody wrote
        in between, and on a conflict do it again (after a short random pause), up to
        `attempts` times; returns what was written. `change` may run several times."""
        validate_key(key)
        if attempts < 1:
            raise ConfigError("attempts must be >= 1")
        expected = 0
        for attempt in range(attempts):
            last = await self._last(key)
            live = last is not None and last.operation == "put"
            value = change(last.value if live and last is not None else None)
            expected = 0 if last is None else last.revision
            revision = await self._write(key, _encode(value), expected)
            if revision is not None:
                return KeyEntry(key, revision, value)
            await asyncio.sleep(random.uniform(0, min(0.001 * 2**attempt, 0.05)))
        raise RevisionMismatch(self.name, key, expected, await self._current(key))

    # -- the wire -----------------------------------------------------------------------------

    async def _write(
        self, key: str, payload: bytes, expected: int | None, operation: str = ""
    ) -> int | None:
        """The new revision, or None when the key was not at `expected`."""
        event_id = new_event_id()
        headers = {h.MSG_ID: event_id}
        if expected is not None:
            headers[h.EXPECTED_LAST_SUBJECT_SEQ] = str(expected)
        if operation:
            headers["KV-Operation"] = operation
        span = self._host.telemetry.start_publish(self._template, event_id, headers, len(payload))
        out = Outgoing(self._subject + key, payload, headers, event_id, span)
        try:
            return (await self._host.publisher.send(out)).seq
        except ConcurrencyError:
            return None
        except NoStreamForSubject:
            raise StreamNotFound(self.spec.stream) from None

    async def _last(self, key: str) -> KeyEntry[T] | None:
        """The key's last revision, deletions included (from the leader when replicated)."""
        subject, stream, nc = self._subject + key, self.spec.stream, self._host.nc
        if await self._host.streams.replicated(stream):
            found = await read_from_leader(nc, stream, last_by_subject=subject)
        else:
            found = next(iter(await read_last(nc, stream, [subject], 1)), None)
        return None if found is None else self._entry(found)

    async def _current(self, key: str) -> int:
        """The key's live revision, 0 when absent: what a refused write reports."""
        last = await self._last(key)
        return last.revision if last is not None and last.operation == "put" else 0

    def _entry(self, message: StoredMessage) -> KeyEntry[T]:
        operation = _OPERATIONS.get(message.headers.get("KV-Operation", ""), "put")
        key = message.subject[len(self._subject) :]
        value = None
        if operation == "put":
            try:
                value = self._decode(message.data)
            except msgspec.DecodeError as exc:
                raise DecodeError(str(exc), message.subject) from None
        return KeyEntry(key, message.seq, value, operation, message.time)

    async def _subjects(self, filter_: str) -> list[str]:
        """Every subject of the bucket's stream matching `filter_` (the leader's list, asked
        a page at a time)."""
        found: list[str] = []
        nc, stream = self._host.nc, self.spec.stream
        while True:
            request = _encode({"subjects_filter": filter_, "offset": len(found)})
            try:
                reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=5.0)
                info = _decode_info(reply.data)
            except nats.errors.NoRespondersError:
                raise StreamNotFound(stream) from None
            except nats.errors.TimeoutError:
                raise BusTimeout(f"listing keys of {self.name!r}: no answer in time") from None
            except (nats.errors.Error, msgspec.DecodeError) as exc:
                raise StreamError(f"listing keys of {self.name!r}: {exc}") from None
            if info.error is not None:
                if info.error.err_code == STREAM_NOT_FOUND:
                    raise StreamNotFound(stream)
                raise StreamError(f"listing keys of {self.name!r}: {info.error.description}")
            page = list((info.state.subjects or {}) if info.state else {})
            found.extend(page)
            if not page or len(found) >= info.total:
                return found


class _ApiError(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _State(msgspec.Struct):
    subjects: dict[str, int] | None = None


class _Info(msgspec.Struct):
    state: _State | None = None
    total: int = 0
    error: _ApiError | None = None


_decode_info = msgspec.json.Decoder(_Info).decode


class Buckets:
    """The buckets a Bus declares, by name: each created at start, handed out by name."""

    def __init__(self, host: _Host, specs: Iterable[BucketSpec]) -> None:
        self._host = host
        self.specs = {spec.name: spec for spec in specs}
        self._handles: dict[str, Bucket[Any]] = {}

    async def ensure(self) -> None:
        for name in self.specs:
            await self[name].ensure()

    def __getitem__(self, name: str) -> Bucket[Any]:
        handle = self._handles.get(name)
        if handle is None:
            spec = self.specs.get(name)
            if spec is None:
                known = ", ".join(sorted(self.specs)) or "none"
                raise ConfigError(f"no bucket {name!r} is declared (known: {known})")
            handle = self._handles[name] = Bucket(self._host, spec)
        return handle
