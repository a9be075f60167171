"""The NATS connection: nats-py's client plus a direct lane for our pull consumers.

nats-py turns every incoming message into a `Msg`, parses all its headers, and queues it to
a per-subscription task before a callback sees it. For a pull consumer that is most of the
cost of consuming (on the bench machine raw `fetch`+ack tops out near 11k msgs/s; the same
messages through a direct lane near 100k). A lane receives the raw protocol fields straight
from the parser; everything else (reconnects, resubscribing, publishing) stays nats-py's.

This leans on nats-py internals (`_process_msg`, the parser's fields, the pending buffer).
Every consumer test runs through the lane, so a nats-py release that changes them fails the
suite at once; pyproject.toml bounds nats-py to the releases tested, and importing this module
checks the installed one has them all (bus/_nats_internals.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser

from ._errors import OutboundBufferFull
from ._nats_internals import check_nats_internals

check_nats_internals(Client, Subscription, nats_parser)  # once: a clear error, not a broken lane
AWAITING_CONTROL_LINE = nats_parser.AWAITING_CONTROL_LINE
AWAITING_MSG_PAYLOAD = nats_parser.AWAITING_MSG_PAYLOAD

# (subject, reply, payload, raw header block or None)
Lane = Callable[[bytes, bytes, bytes, bytes | None], None]


async def _unused(msg: Msg) -> None:  # pragma: no cover - lane subscriptions bypass callbacks
    return None


class Connection(Client):
    def __init__(self) -> None:
        super().__init__()
        self._lanes: dict[int, Lane] = {}
        self._ps = _LaneParser(self)

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


class _LaneParser(nats_parser.Parser):
    """nats-py's protocol parser with a fast path for the messages themselves (MSG, HMSG):
    the control line split rather than matched by regular expressions (two per message), the
    buffer read through one view and cut once per read rather than once per message, and lane
    messages handed over without a coroutine. Every other line goes the usual way."""

    nc: Connection

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        while self.buf:
            found = self._deliver()
            if found is _INCOMPLETE:
                return
            if found is _OTHER:
                await super().parse()  # PING, INFO, +OK, -ERR...: the usual way
                return
            await self.nc._process_msg(*found)  # no lane: the usual way

    def _deliver(self) -> tuple[Any, ...]:
        """Hand the messages at the front of the buffer to their lanes, up to one without a
        lane (returned), one not all here yet (_INCOMPLETE), or another kind of line or the
        end of the buffer (_OTHER: the usual parser takes what is left, if anything).

        The message being read lives in locals; nats-py's fields hold it only across reads."""
        buf, lanes = self.buf, self.nc._lanes
        view = memoryview(buf)
        at, size, count, volume = 0, len(buf), 0, 0
        found = _OTHER
        try:
            while at < size:
                if self.state == AWAITING_CONTROL_LINE:
                    kind = buf[at]
                    if kind != _H and kind != _M:
                        break
                    eol = buf.find(b"\r\n", at)
                    if eol < 0:
                        found = _INCOMPLETE
                        break
                    args = view[at + 4 : eol].tobytes().split()
                    sid, subject, reply, head, needed = _control_line(args, kind == _H)
                    at = eol + 2
                else:  # its control line came with an earlier read
                    arg, head, needed = self.msg_arg, self.header_needed, self.needed
                    sid, subject, reply = arg["sid"], arg["subject"], arg["reply"]
                    self.state, self.header_needed = AWAITING_CONTROL_LINE, 0
                if size - at < needed + 2:
                    self.msg_arg.update(sid=sid, subject=subject, reply=reply)
                    self.header_needed, self.needed = head, needed
                    self.state = AWAITING_MSG_PAYLOAD
                    found = _INCOMPLETE
                    break
                headers = view[at : at + head].tobytes() if head else None
                payload = view[at + head : at + needed].tobytes()
                at += needed + 2
                lane = lanes.get(sid)
                if lane is None:
                    found = (sid, subject, reply, payload, headers)
                    break
                count += 1
                volume += needed - head
                lane(subject, reply, payload, headers)
        finally:
            view.release()
            del buf[:at]
            self.nc.stats["in_msgs"] += count
            self.nc.stats["in_bytes"] += volume
        return found


def _control_line(args: list[bytes], headed: bool) -> tuple[int, bytes, bytes, int, int]:
    """(sid, subject, reply, header size, size) from `MSG <subject> <sid> [reply] <size>` or
    `HMSG <subject> <sid> [reply] <header size> <size>`."""
    try:
        needed = int(args.pop())
        head = int(args.pop()) if headed else 0
        if len(args) == 2:
            return int(args[1]), args[0], b"", head, needed
        if len(args) == 3:
            return int(args[1]), args[0], args[2], head, needed
    except (ValueError, IndexError):
        pass
    raise ProtocolError("nats: malformed MSG")


_H, _M = b"HM"  # what HMSG and MSG lines start with
_INCOMPLETE: tuple[Any, ...] = ()  # (markers `_deliver` returns, told apart by identity)
_OTHER: tuple[Any, ...] = ("other",)


def parse_headers(raw: bytes) -> tuple[str | None, dict[str, str]]:
    """(status code or None, headers) from a raw `NATS/1.0 [code [text]]` header block.

    Lines are `Name: Value` as every NATS client writes them; `Name:Value` is accepted too.
    """
    lines = raw.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
            if not sep:
                continue  # the blank lines that end the block
            name, value = name.strip(), value.strip()
        headers[name] = value
    first = lines[0]
    if len(first) < 12:
        return None, headers
    if len(first) > 13:
        headers.setdefault("Description", first[13:])
    return first[9:12], headers
