"""How a projector learns of new events: shared per stream, pushed while caught up.

`SharedReads` lets a Projector's projections of one stream share one wake-up lane per
subject and one direct get per identical read in flight. `Tail` is an ordered push consumer
for a projection that has caught up: new events arrive without a read round trip, and a
gap, a reconnect, silence or too long a backlog hands it back to reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import msgspec
import nats.errors

from ._client import Bus
from ._errors import BusError
from ._nats.deliveries import sequences_and_pending
from ._nats.direct import StoredMessage
from ._nats.wire import parse_headers
from ._reader import read_messages

log = logging.getLogger("bus.projector")
TAIL_HEARTBEAT = 1.0  # seconds between the server's heartbeats on a quiet tail
TAIL_BACKLOG = 4096  # pushed messages held unfolded before reading is the better way


class SharedReads:
    """What a Projector's projections share: one wake-up lane per subject, and one direct get
    for those asking for the same page of a stream at once (projections of one stream
    usually stand at the same position and wake on the same event)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._rings = 0  # wake-ups so far
        self._lanes: dict[str, tuple[Any, set[asyncio.Event]]] = {}
        self._reads: dict[tuple[Any, ...], asyncio.Task[list[StoredMessage]]] = {}

    async def listen(self, subject: str, wake: asyncio.Event) -> None:
        """Set `wake` on every new message on `subject`."""
        if subject in self._lanes:
            self._lanes[subject][1].add(wake)
            return
        wakes = {wake}

        def ring(*_: object) -> None:
            self._rings += 1
            for each in wakes:
                each.set()

        self._lanes[subject] = (None, wakes)  # who listens meanwhile joins these wakes
        try:
            lane = await self._bus.nc.open_lane(subject, ring)
        except BaseException:
            del self._lanes[subject]
            raise
        self._lanes[subject] = (lane, wakes)

    async def unlisten(self, subject: str, wake: asyncio.Event) -> None:
        lane, wakes = self._lanes[subject]
        wakes.discard(wake)
        if not wakes:
            del self._lanes[subject]
            self._bus.nc.close_lane(lane)
            with contextlib.suppress(nats.errors.Error):
                await lane.unsubscribe()

    async def read(
        self, stream: str, from_seq: int, limit: int, subject: str | None
    ) -> list[StoredMessage]:
        """Up to `limit` messages from `from_seq`, joining an identical read in flight only
        if no wake-up came since it was sent (so it answers for every event the caller was
        woken for, as its own read would)."""
        key = (stream, from_seq, limit, subject, self._rings)
        task = self._reads.get(key)
        if task is None:
            read = read_messages(self._bus.nc, stream, from_seq, limit, subject)
            task = self._reads[key] = asyncio.create_task(read)
            task.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(task)  # a reader that gives up cancels only itself

    def _settled(self, key: tuple[Any, ...], task: asyncio.Task[list[StoredMessage]]) -> None:
        self._reads.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every reader may have given up on it


class Tail:
    """A stream's new messages pushed as they are stored (an ordered push consumer that
    acknowledges nothing): a caught-up projection folds them without a read round trip.

    It only ever answers with an unbroken chain of the consumer's deliveries; a gap, a
    reconnect, silence past two heartbeats or a backlog past `TAIL_BACKLOG` ends it, and the
    projection reads again (then follows anew once caught up)."""

    def __init__(self, bus: Bus, stream: str, subject: str | None, wake: asyncio.Event) -> None:
        self._bus, self._stream, self._subject, self._wake = bus, stream, subject, wake
        self._buffer: deque[StoredMessage] = deque()
        self._delivered = 0  # the consumer's sequence of the last message pushed
        self._heard = 0.0  # loop time of the last message or heartbeat
        self._epoch = bus.nc.reconnects
        self._lane: Any = None
        self._consumer = ""
        self._answers: set[asyncio.Task[None]] = set()
        self.broken = False

    async def start(self, after: int) -> bool:
        """Follow from the message after stream sequence `after`; False if it could not.

        The creation is asked on a lane of its own, not with `nc.request`: on Python 3.11
        its `wait_for` can swallow the cancellation that stops a projection. The messages
        come on a subscription to exactly the deliver subject (JetStream does not count a
        wildcard one as interest at once)."""
        nc = self._bus.nc
        loop = asyncio.get_running_loop()
        inbox = nc.new_inbox()
        created: asyncio.Future[bytes] = loop.create_future()

        def answered(subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
            if not created.done():
                created.set_result(b"" if raw else data)  # a status (503): no JetStream

        answers = await nc.open_lane(f"{inbox}.created", answered)
        config: dict[str, object] = {
            "deliver_subject": inbox,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": after + 1,
            "ack_policy": "none",
            "flow_control": True,
            "idle_heartbeat": int(TAIL_HEARTBEAT * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
        }
        if self._subject:
            config["filter_subject"] = self._subject
        request = {"stream_name": self._stream, "config": config}
        self._heard = loop.time()
        create = f"$JS.API.CONSUMER.CREATE.{self._stream}"
        try:
            self._lane = await nc.open_lane(inbox, self._receive)
            await nc.send(create, msgspec.json.encode(request), f"{inbox}.created")
            async with asyncio.timeout(2):
                answer = await created
            self._consumer = msgspec.json.decode(answer).get("name", "")
        except (BusError, msgspec.DecodeError, TimeoutError):
            pass
        except BaseException:  # cancelled (the projection stops): leave no lane behind
            await self.stop()
            raise
        finally:
            nc.close_lane(answers)
            with contextlib.suppress(nats.errors.Error):
                await answers.unsubscribe()
        if not self._consumer:
            await self.stop()
            return False
        return True

    def following(self) -> bool:
        if self.broken or self._bus.nc.reconnects != self._epoch:
            return False
        return asyncio.get_running_loop().time() - self._heard < 2 * TAIL_HEARTBEAT

    def take(self, position: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` pushed messages after stream sequence `position`: the consumer
        started at or before it and delivered without a gap, so they are the next ones."""
        buffer = self._buffer
        while buffer and buffer[0].seq <= position:  # already read while catching up
            buffer.popleft()
        return [buffer.popleft() for _ in range(min(limit, len(buffer)))]

    async def stop(self) -> None:
        self.broken = True
        self._buffer.clear()
        nc = self._bus.nc
        if self._lane is not None:
            nc.close_lane(self._lane)
            with contextlib.suppress(nats.errors.Error):
                await self._lane.unsubscribe()
        if self._consumer:  # the server would drop it once no one listens; sooner is better
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(f"$JS.API.CONSUMER.DELETE.{self._stream}.{self._consumer}")

    def _receive(self, subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
        if self.broken:
            return  # until it is stopped, nothing it receives is used
        status, headers = parse_headers(raw) if raw else (None, {})
        self._heard = asyncio.get_running_loop().time()
        if status is not None:  # a heartbeat or a flow control request
            answer = reply.decode() or headers.get("Nats-Consumer-Stalled", "")
            if answer:
                task = asyncio.get_running_loop().create_task(self._bus.nc.publish(answer))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)
            last = headers.get("Nats-Last-Consumer")
            if status == "100" and last is not None and int(last) != self._delivered:
                self._break()
            return
        seq, delivered, pending = sequences_and_pending(reply)
        if delivered != self._delivered + 1 or len(self._buffer) >= TAIL_BACKLOG:
            self._break()
            return
        self._delivered += 1
        # (the stored time is not needed to fold)
        message = StoredMessage(self._stream, seq, subject.decode(), "", data, headers, pending)
        self._buffer.append(message)
        self._wake.set()

    def _break(self) -> None:
        self.broken = True
        self._buffer.clear()
        self._wake.set()  # the projection reads what the tail can no longer vouch for
