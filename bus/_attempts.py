"""The attempts record: which attempt of a message last failed cleanly (its handler raised),
per consumer, in the KV bucket `bus_attempts` (entries kept a day).

A redelivery reads it as its failure epoch (bus._followups): the ids its handler derives then
differ from those of the failed attempt (a retry's events are new facts) but equal those of
a run that crashed in the same epoch (a rerun's events are stored once). Only failures write
and only redeliveries read: a first delivery never touches it.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ._errors import (
    BusError,
    BusTimeout,
    ConnectError,
    OutboundBufferFull,
    StreamError,
    StreamNotFound,
)
from ._kv import ensure_bucket, kv_key
from ._nats.connection import Connection
from ._reader import read_from_leader

log = logging.getLogger("bus.consumer")
BUCKET = "bus_attempts"
KEEP_FOR = 24 * 3600.0  # seconds an entry lives: far past any redelivery's backoff
PAUSES = 0.1, 1.0  # seconds between tries to record a failed attempt: the first, the longest
# A handler failing with one of these could not reach NATS; it did not decide to fail. Its
# retry is not a new attempt but a rerun, as after a crash: nothing is recorded.
UNREACHED = (BusTimeout, ConnectError, OutboundBufferFull)


class AttemptRecord:
    """The record as one consumer reads and writes it; errors come out as BusError."""

    def __init__(
        self, nc: Connection, js: JetStreamContext, stream: str, durable: str, replicas: int = 1
    ) -> None:
        self._nc, self._js, self._replicas = nc, js, replicas
        self._prefix = f"{stream}.{durable}."
        self._bucket: KeyValue | None = None

    def key(self, seq: int) -> str:
        return kv_key(f"{self._prefix}{seq}")

    async def failed(self, seq: int, attempt: int, within: float) -> None:
        """Record that `attempt` of message `seq` failed cleanly (before it is nak'ed), trying
        again for `within` seconds while NATS is away. If it cannot, the retry repeats this
        attempt's ids: what this attempt published is then kept, not stored twice."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        pause, longest = PAUSES
        while True:
            try:
                await self._put(seq, attempt)
                return
            except BusError as exc:
                if loop.time() + pause > give_up:
                    where = f"{self._prefix}{seq}"
                    log.warning("recording failed attempt %d of %s: %s", attempt, where, exc)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    async def _put(self, seq: int, attempt: int) -> None:
        try:
            if self._bucket is None:
                self._bucket = await ensure_bucket(
                    self._js, BUCKET, ttl=KEEP_FOR, replicas=self._replicas
                )
            await self._bucket.put(self.key(seq), str(attempt).encode())
        except nats.errors.TimeoutError:
            raise BusTimeout(f"recording a failed attempt in {BUCKET!r} timed out") from None
        except nats.errors.Error as exc:
            raise StreamError(f"recording a failed attempt in {BUCKET!r}: {exc}") from None

    async def epoch(self, seq: int) -> int:
        """The last attempt of message `seq` that failed cleanly (0: none), as the bucket's
        leader has it: a redelivery right after the failure never reads the value before."""
        try:
            found = await read_from_leader(
                self._nc, f"KV_{BUCKET}", last_by_subject=f"$KV.{BUCKET}.{self.key(seq)}"
            )
        except StreamNotFound:
            return 0  # nothing has failed yet
        if found is None or not found.data.isdigit():  # (a delete marker has no data)
            return 0
        return int(found.data)
