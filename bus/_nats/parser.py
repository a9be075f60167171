"""nats-py's protocol parser with a fast path for the messages themselves (MSG, HMSG), which
it hands to our lanes (bus._nats.connection) without a coroutine or a `Msg`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

# (subject, reply, payload, raw header block or None)
Lane = Callable[[bytes, bytes, bytes, bytes | None], None]


class Laned(Protocol):
    """The client a LaneParser reads for: its lanes by subscription id, nats-py's own way to
    process a message (for those without a lane), and its counters."""

    _lanes: dict[int, Lane]
    stats: dict[str, int]

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None: ...


class LaneParser(Parser):
    """nats-py's protocol parser with a fast path for the messages themselves (MSG, HMSG):
    the control line split rather than matched by regular expressions (two per message), the
    buffer read through one view and cut once per read rather than once per message, and lane
    messages handed over without a coroutine. Every other line goes the usual way."""

    nc: Laned

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
