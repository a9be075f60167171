"""A pull consumer's outstanding requests: what it asked for and what it is still owed.

Pulls go out as plain `$JS.API.CONSUMER.MSG.NEXT` requests, each with its own reply subject,
so every status is matched to the request it ends; messages fill the oldest request first.
Requests carry an idle heartbeat: one the server has gone quiet on (restart, leader change)
is forgotten, so what it still owed is asked for again.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable

import msgspec

from bus._errors import OutboundBufferFull
from bus._nats.connection import Connection

_encode = msgspec.json.Encoder().encode


class _Pull:
    __slots__ = ("id", "last_seen", "remaining")

    def __init__(self, pull_id: str, size: int) -> None:
        self.id, self.remaining = pull_id, size
        self.last_seen = time.monotonic()


class Pulls:
    """The open pull requests of the durable consumer `durable` on `stream`; `forgotten` is
    called when messages asked for will not come (the asker may ask again)."""

    def __init__(
        self,
        nc: Connection,
        stream: str,
        durable: str,
        expires: float,
        heartbeat: float,
        forgotten: Callable[[], None],
    ) -> None:
        self._nc, self._forgotten = nc, forgotten
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._expires, self._heartbeat = expires, heartbeat
        self._open: dict[str, _Pull] = {}  # in request order
        self._ids = itertools.count()
        self.inbox = ""  # requests are answered on `<inbox>.<pull id>`
        self.requested = 0  # messages asked for and not yet delivered

    def __bool__(self) -> bool:
        return bool(self._open)

    async def ask(self, size: int) -> None:
        pull_id = str(next(self._ids))
        body = {
            "batch": size,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._open[pull_id] = _Pull(pull_id, size)
        self.requested += size
        # While disconnected this waits in the buffer; a pull that never reaches the server
        # is forgotten by `expire` and asked again.
        with contextlib.suppress(OutboundBufferFull):
            await self._nc.send(self._subject, _encode(body), f"{self.inbox}.{pull_id}")

    def delivered(self, now: float) -> bool:
        """A message came: count it against the oldest request; False if none is open (it
        came for one already forgotten)."""
        if not self._open:
            return False
        pull = next(iter(self._open.values()))
        pull.remaining -= 1
        self.requested -= 1
        pull.last_seen = now
        if pull.remaining == 0:
            del self._open[pull.id]
        return True

    def status(self, subject: bytes, code: str) -> bool:
        """A status on a request's reply subject (100 is a heartbeat, 404/408/409/503 end the
        request); False if the request is no longer open."""
        pull_id = subject.decode()[len(self.inbox) + 1 :]
        pull = self._open.get(pull_id)
        if pull is None:
            return False
        pull.last_seen = time.monotonic()
        if code != "100":
            self._forget(pull_id)
        return True

    def expire(self) -> None:
        """Forget the requests the server has gone quiet on."""
        deadline = time.monotonic() - max(3 * self._heartbeat, self._expires + self._heartbeat)
        for pull_id, pull in list(self._open.items()):
            if pull.last_seen < deadline:
                self._forget(pull_id)

    def clear(self) -> None:
        self._open.clear()
        self.requested = 0

    def _forget(self, pull_id: str) -> None:
        pull = self._open.pop(pull_id, None)
        if pull is not None:
            self.requested -= pull.remaining
            self._forgotten()
