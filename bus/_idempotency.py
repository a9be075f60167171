"""Idempotency records: the first result of a request made with a key, kept for a day.

JetStream drops a repeated event id only within its stream's duplicate window (2 minutes by
default), so a client retrying later would store its event twice. A record in the KV bucket
`bus_idempotency` (TTL 24 h by default) keeps a key's request fingerprint and, once done,
its result:

    records = IdempotencyRecords(bus)
    match await records.begin(key, fingerprint(subject, body)):
        case Replay(result): ...                # the first request's result, again
        case InFlight() | Mismatch(): ...       # 409 and 422, in HTTP terms
        case Claim() as claim:                  # ours to do (ids derived from the key)
            ...                                 # claim.takeover: look for its work first
            await records.finish(claim, result) # or release(claim) if it stored nothing

Claiming is a KV create: atomic on the stream leader, one claimer wins. Finishing is an
update conditional on the claim's revision. An existing record is read from the leader (a
replica's direct get may be behind). A claimer that crashed or lost NATS leaves a pending
record; once it is older than `stale_after` (the publish timeout plus a margin: by then the
first attempt has stopped sending) another request takes it over, with an update conditional
on the revision it read, so only one does. `find_stored` tells the taker what the first
attempt stored, before it does the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from ._client import Bus
from ._errors import BusError, BusTimeout, ConfigError, StreamError
from ._kv import ensure_bucket, kv_key
from ._nats.direct import StoredMessage
from ._reader import read_from_leader
from ._subjects import validate_token

BUCKET = "bus_idempotency"
STREAM = f"KV_{BUCKET}"
DEFAULT_TTL = 24 * 3600.0  # seconds a record is kept after its last write
MARGIN = 5.0  # seconds past the publish timeout before a pending record counts as abandoned
MAX_KEY = 128  # characters
ROUNDS = 5  # claim attempts while other requests change the record under us
PAGE = 256  # messages per read when looking for what a taken-over attempt stored
_DELETED = {"DEL", "PURGE"}  # the KV-Operation of a tombstone


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the bucket keeps per key. `started_at` is the claimer's clock (unix seconds)."""

    fingerprint: str
    started_at: float
    done: bool = False
    result: bytes = b""


class Claim(msgspec.Struct, frozen=True):
    """The key is ours: do the work, then `finish` (or `release`). `takeover`: an earlier
    attempt was abandoned mid-flight, and may have stored its work."""

    key: str
    revision: int
    fingerprint: str
    takeover: bool = False


class Replay(msgspec.Struct, frozen=True):
    """The key's request was done before: its result."""

    result: bytes


class InFlight(msgspec.Struct, frozen=True):
    """The key's first request is still being done (since `age` seconds)."""

    age: float


class Mismatch(msgspec.Struct, frozen=True):
    """The key was used for another request (a different fingerprint)."""


Outcome = Claim | Replay | InFlight | Mismatch
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode


def check_key(key: str, what: str = "idempotency key") -> str:
    """`key` if it can be an idempotency key, else ConfigError naming it `what`: it becomes
    an event id (and `<key>.<n>` those of a batch), so it is one subject token of at most
    128 characters."""
    if len(key) > MAX_KEY:
        raise ConfigError(f"{what} is longer than {MAX_KEY} characters")
    validate_token(key, what)
    return key


def fingerprint(*parts: str | bytes) -> str:
    """A digest of a request's parts (each length-prefixed: no two lists of parts collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


class IdempotencyRecords:
    """Records of keyed requests in `bus_idempotency` (created on first use, with `ttl` and
    the bus's replicas; an existing bucket is given this `ttl`)."""

    DEFAULT_TTL = DEFAULT_TTL
    MAX_KEY = MAX_KEY
    check_key = staticmethod(check_key)
    fingerprint = staticmethod(fingerprint)

    def __init__(
        self,
        bus: Bus,
        *,
        ttl: float = DEFAULT_TTL,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl > 0:
            raise ConfigError("the idempotency TTL must be > 0 seconds")
        self._bus = bus
        self.ttl = ttl
        self.stale_after = bus.publish_timeout + MARGIN if stale_after is None else stale_after
        self._clock = clock  # wall clock: records are compared across processes
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def find_stored(
        self, stream: str, subjects: str, event_ids: Sequence[str]
    ) -> list[StoredMessage]:
        """The messages on `subjects` (an aggregate's, say) whose event ids are `event_ids`,
        in stream order: what an abandoned attempt stored. Reads every message on
        `subjects`, a page per round trip: for the rare takeover, not for every request."""
        wanted = set(event_ids)
        found: list[StoredMessage] = []
        seq = 1
        while True:
            page = await self._bus.read(stream, seq, PAGE, subjects)
            found.extend(m for m in page if m.event_id in wanted)
            if len(page) < PAGE or len(found) == len(wanted):
                return found
            seq = page[-1].seq + 1

    async def begin(self, key: str, request: str) -> Outcome:
        """Claim `key` for the request with fingerprint `request`, or say why not."""
        kv = await self._bucket()
        stored = kv_key(check_key(key))
        last, takeover = 0, False
        for _ in range(ROUNDS):
            pending = _encode(Record(request, self._clock()))
            try:
                revision = await kv.update(stored, pending, last=last)  # last=0: create
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # a record we have not seen (yet)
            except nats.errors.Error as exc:
                raise _failed(exc, key) from None
            else:
                return Claim(key, revision, request, takeover)
            last, record = await self._read(stored, key)
            if record is None:  # expired, or released
                takeover = False
                continue
            if record.fingerprint != request:
                return Mismatch()
            if record.done:
                return Replay(record.result)
            age = self._clock() - record.started_at
            if age < self.stale_after:
                return InFlight(max(age, 0.0))
            takeover = True  # abandoned: ours if our update on its revision wins
        raise StreamError(f"idempotency key {key!r}: its record kept changing under us")

    async def finish(self, claim: Claim, result: bytes) -> bool:
        """Keep `result` as the key's answer; False when the claim was taken over meanwhile
        (its taker finds the same work stored and records the same result)."""
        kv = await self._bucket()
        done = Record(claim.fingerprint, self._clock(), done=True, result=result)
        try:
            await kv.update(kv_key(claim.key), _encode(done), last=claim.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.errors.Error as exc:
            raise _failed(exc, claim.key) from None
        return True

    async def release(self, claim: Claim) -> None:
        """Forget the claim of a request that stored nothing (it was refused), so the key can
        be used again at once. Best effort: a record left pending is taken over once stale."""
        kv = await self._bucket()
        with contextlib.suppress(nats.errors.Error):
            await kv.delete(kv_key(claim.key), last=claim.revision)

    async def get(self, key: str) -> Record | None:
        """The key's record as the leader has it, or None."""
        if self._kv is None and not await self._exists():
            return None  # never used: not even the bucket exists
        return (await self._read(kv_key(check_key(key)), key))[1]

    async def _read(self, stored: str, key: str) -> tuple[int, Record | None]:
        """(revision, record) as the leader has them: (0, None) for a key never written (or
        expired), a None record for a released one."""
        found = await read_from_leader(
            self._bus.nc, STREAM, last_by_subject=f"$KV.{BUCKET}.{stored}"
        )
        if found is None:
            return 0, None
        if found.headers.get("KV-Operation") in _DELETED:
            return found.seq, None
        try:
            return found.seq, _decode(found.data)
        except msgspec.DecodeError:
            raise StreamError(f"idempotency key {key!r}: its record is unreadable") from None

    async def _exists(self) -> bool:
        try:
            await self._bus.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            return False
        except nats.errors.Error as exc:
            raise _failed(exc, "") from None
        return True

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        async with self._opening:
            if self._kv is None:
                js = self._bus.js
                try:
                    kv = await ensure_bucket(js, BUCKET, ttl=self.ttl, replicas=self._bus.replicas)
                    config = (await js.stream_info(STREAM)).config
                    if abs((config.max_age or 0) - self.ttl) > 1e-3:  # made with another TTL
                        window = min(config.duplicate_window or self.ttl, self.ttl)
                        changed = dataclasses.replace(
                            config, max_age=self.ttl, duplicate_window=window
                        )
                        await js.update_stream(changed)
                except nats.errors.Error as exc:
                    raise _failed(exc, "") from None
                self._kv = kv
        return self._kv


def _failed(exc: nats.errors.Error, key: str) -> BusError:
    where = f"idempotency key {key!r}" if key else f"bucket {BUCKET!r}"
    if isinstance(exc, nats.errors.TimeoutError):
        return BusTimeout(f"{where}: NATS did not answer in time")
    return StreamError(f"{where}: {exc}")
