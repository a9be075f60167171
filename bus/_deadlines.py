"""Many waits with deadlines, ended by one timer.

Every publish waits for its ack at most so long. An `asyncio.timeout` per publish is a
timer handle, a cancel scope and an uncancel each (~4.5 us, ~5% of a workflow step's client
time). Here a wait's deadline goes on a heap, and one timer, set for the earliest, expires
what is due: the waiter is woken and finds out it timed out by what it has not got. A wait
that ends sooner stays on the heap until its deadline, and is then passed over. Once the
timer has fired, the next firing comes at least GRAIN later, so a steady stream of waits
(a deadline per publish) wakes it once per GRAIN, not once per wait: a wait may end up to
GRAIN past its deadline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol

GRAIN = 0.005  # seconds: the timer fires at most this often


class Expiring(Protocol):
    def expire(self) -> None:
        """Wake whoever waits, if still waiting: the deadline has come."""


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expiring]] = []
        self._order = itertools.count()  # (ties never compare the waits)
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0  # when the timer fires

    def add(self, wait: Expiring, seconds: float) -> None:
        """`wait.expire()` in `seconds` (at once, on the loop's next turn, if <= 0)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(seconds, 0.0)
        heapq.heappush(self._heap, (at, next(self._order), wait))
        if self._timer is None or at < self._next:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._next = loop.call_at(at, self._due), at

    def _due(self) -> None:
        # The loop runs a timer up to its clock resolution early: what was due then is due.
        now = max(asyncio.get_running_loop().time(), self._next)
        heap = self._heap
        while heap and heap[0][0] <= now:
            heapq.heappop(heap)[2].expire()
        self._timer = None
        if heap:
            self._next = max(heap[0][0], now + GRAIN)
            self._timer = asyncio.get_running_loop().call_at(self._next, self._due)
