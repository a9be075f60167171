"""The NATS connection: nats-py's client plus a direct lane for our pull consumers.

nats-py turns every incoming message into a `Msg`, parses all its headers, and queues it to
a per-subscription task before a callback sees it. For a pull consumer that is most of the
cost of consuming (on the bench machine raw `fetch`+ack tops out near 11k msgs/s; the same
messages through a direct lane near 100k). A lane receives the raw protocol fields straight
from the parser; everything else (reconnects, resubscribing, publishing) stays nats-py's.
Requests get their replies the same way (`ask`): on one lane, each settling its caller's
future, without nats-py's per-request `wait_for` and per-reply task hop.

This leans on nats-py internals (`_process_msg`, the pending buffer). Every consumer test
runs through the lane, so a nats-py release that changes them fails the suite at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._errors import OutboundBufferFull

from .parser import Lane, LaneParser


async def _unused(msg: Msg) -> None:  # pragma: no cover - lane subscriptions bypass callbacks
    return None


PING_INTERVAL = 1  # seconds
INITIAL_CONNECT_ROUNDS = 2  # tries per server before open() gives up; then reconnects are endless


class Connection(Client):
    def __init__(self) -> None:
        super().__init__()
        self._lanes: dict[int, Lane] = {}
        self._ps = LaneParser(self)
        self._replies = ""  # the inbox our requests' replies come to, once its lane is open
        self._replies_opening: asyncio.Future[str] | None = None
        self._asking: dict[int, asyncio.Future[tuple[bytes, bytes | None]]] = {}
        self._asked = 0

    async def open(
        self,
        urls: list[str],
        *,
        name: str,
        connect_timeout: float,
        drain_timeout: float,
        on_error: Callable[[Exception], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]],
        **options: Any,
    ) -> None:
        """Connect to one of `urls`, all within one bound (nats-py can wait forever on some
        failures, a TLS handshake it cannot finish); once connected, reconnect forever."""
        bound = (connect_timeout + 0.5) * INITIAL_CONNECT_ROUNDS * len(urls) + 1
        async with asyncio.timeout(bound):
            await self.connect(
                servers=urls,
                name=name,
                connect_timeout=connect_timeout,  # type: ignore[arg-type] # float works
                allow_reconnect=True,
                max_reconnect_attempts=INITIAL_CONNECT_ROUNDS,
                reconnect_time_wait=0.25,  # type: ignore[arg-type] # float works
                # A server that stops answering without closing the connection (frozen, cut
                # off) is left after two unanswered pings: ~2-3 s, not nats-py's 4 minutes.
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=2,
                drain_timeout=int(drain_timeout),
                error_cb=on_error,
                reconnected_cb=on_reconnect,
                **options,
            )
        self.options["max_reconnect_attempts"] = -1

    @property
    def reconnects(self) -> int:
        """How many times it has reconnected: what a view held in memory is valid for."""
        return int(self.stats["reconnects"])

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if not self.to_lane(sid, subject, reply, data, headers):
            await super()._process_msg(sid, subject, reply, data, headers)

    def to_lane(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Hand a message to its lane, if its subscription has one."""
        lane = self._lanes.get(sid)
        if lane is None:
            return False
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        lane(subject, reply, data, headers or None)
        return True

    async def open_lane(self, subject: str, lane: Lane) -> Subscription:
        """Subscribe `lane` to `subject`; nats-py still resubscribes it after reconnects."""
        sub = await self.subscribe(subject, cb=_unused)
        self._lanes[sub._id] = lane
        return sub

    def close_lane(self, sub: Subscription) -> None:
        self._lanes.pop(sub._id, None)

    async def ask(
        self, subject: str, payload: bytes, headers: bytes | None, timeout: float
    ) -> tuple[bytes, bytes | None]:
        """A request: the reply's data and raw header block (None: it has none); TimeoutError
        when none comes within `timeout` seconds."""
        inbox = self._replies or await self._reply_lane()
        self._asked = token = self._asked + 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[bytes, bytes | None]] = loop.create_future()
        self._asking[token] = answer
        expiry = loop.call_later(timeout, _expire, answer)
        try:
            self.buffer(subject, payload, f"{inbox}.{token}", headers)
            self.flush_soon()
            return await answer
        finally:
            expiry.cancel()
            self._asking.pop(token, None)

    async def _reply_lane(self) -> str:
        """Open the replies' lane once, however many requests wait for it."""
        if self._replies_opening is None:
            self._replies_opening = asyncio.ensure_future(self._open_reply_lane())
        return await asyncio.shield(self._replies_opening)

    async def _open_reply_lane(self) -> str:
        inbox = self.new_inbox()
        try:
            await self.open_lane(f"{inbox}.*", self._on_reply)
        except BaseException:
            self._replies_opening = None  # the next request tries again
            raise
        self._replies = inbox
        return inbox

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        token = subject[subject.rfind(b".") + 1 :]
        answer = self._asking.pop(int(token), None) if token.isdigit() else None
        if answer is not None and not answer.done():  # (else a reply after its timeout)
            answer.set_result((data, headers))

    async def send(
        self, subject: str, payload: bytes, reply: str = "", headers: bytes | None = None
    ) -> None:
        """Publish straight into the pending buffer (see `buffer`), and have it flushed."""
        self.buffer(subject, payload, reply, headers)
        self.flush_soon()

    def buffer(
        self, subject: str, payload: bytes, reply: str = "", headers: bytes | None = None
    ) -> None:
        """Add a publish to the pending buffer, with a ready-made header block if any.

        Used for acks, pull requests and our publishes: it skips nats-py's per-call checks and
        header encoding. Buffered like any publish while disconnected (up to nats-py's
        pending limit), and written with whatever else is pending when the flusher runs.
        """
        target = f"{subject} {reply}" if reply else subject
        if headers:
            size = len(headers)
            head = f"HPUB {target} {size} {size + len(payload)}\r\n".encode()
            cmd = b"".join((head, headers, payload, b"\r\n"))
        else:
            cmd = b"".join((f"PUB {target} {len(payload)}\r\n".encode(), payload, b"\r\n"))
        self._pend(cmd)

    def reply(self, subject: bytes, payload: bytes) -> None:
        """`send` for a reply to a message (an ack), its subject still the bytes it came as."""
        self._pend(b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload))
        self.flush_soon()

    def _pend(self, cmd: bytes) -> None:
        if not self.is_connected and len(cmd) + self._pending_data_size > self._max_pending_size:
            raise OutboundBufferFull(self._max_pending_size)
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)

    def flush_soon(self) -> None:
        """Wake the flusher, unless a flush is already due: it writes all that is pending.

        While disconnected nothing is written: the reconnect flushes what waits."""
        queue = self._flush_queue
        if queue is not None and queue.empty() and self.is_connected:
            queue.put_nowait(asyncio.get_running_loop().create_future())


def _expire(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())
