"""Many waits with deadlines, ended by one timer.

Every publish waits for its ack at most so long. An `asyncio.timeout` per publish is a
timer handle, a cancel scope and an uncancel each (~4.5 us, ~5% of a workflow step's client
time). Here the waits are kept in the order of their deadlines, and one timer, set for the
earliest, expires what is due: the waiter is woken and finds out it timed out by what it has
not got. A wait that ends sooner is discarded at once (kept until its deadline, a second's
worth of publishes stayed alive for the collector to scan). Once the timer has fired, the
next firing comes at least GRAIN later, so a steady stream of waits wakes it once per GRAIN,
not once per wait: a wait may end up to GRAIN past its deadline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict
from typing import Protocol

GRAIN = 0.005  # seconds: the timer fires at most this often


class Expiring(Protocol):
    def expire(self) -> None:
        """Wake whoever waits, if still waiting: the deadline has come."""


class Deadlines:
    def __init__(self) -> None:
        # Waits of the same length come in the order of their deadlines: those are kept in
        # the order they came; one due before the last kept (rare: a shorter wait) on a heap.
        self._waits: OrderedDict[Expiring, float] = OrderedDict()
        self._last = 0.0  # the deadline of the last wait kept in order
        self._early: list[tuple[float, int, Expiring]] = []
        self._order = itertools.count()  # (ties on the heap never compare the waits)
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0  # when the timer fires

    def add(self, wait: Expiring, seconds: float) -> None:
        """`wait.expire()` in `seconds` (at once, on the loop's next turn, if <= 0)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(seconds, 0.0)
        if not self._waits or at >= self._last:
            self._waits[wait] = self._last = at
        else:
            heapq.heappush(self._early, (at, next(self._order), wait))
        if self._timer is None or at < self._next:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._next = loop.call_at(at, self._due), at

    def discard(self, wait: Expiring) -> None:
        """`wait` ended before its deadline (one on the heap is passed over when due)."""
        self._waits.pop(wait, None)

    def _due(self) -> None:
        # The loop runs a timer up to its clock resolution early: what was due then is due.
        loop = asyncio.get_running_loop()
        now = max(loop.time(), self._next)
        waits, early = self._waits, self._early
        due: list[tuple[float, Expiring]] = []
        while waits:
            wait, at = next(iter(waits.items()))
            if at > now:
                break
            del waits[wait]
            due.append((at, wait))
        if early and early[0][0] <= now:  # (rare) merged, so the earliest expires first
            while early and early[0][0] <= now:
                at, _, wait = heapq.heappop(early)
                due.append((at, wait))
            due.sort(key=lambda one: one[0])
        for _, wait in due:
            wait.expire()
        firsts = ([next(iter(waits.values()))] if waits else []) + ([early[0][0]] if early else [])
        self._timer = None
        if firsts:
            self._next = max(min(firsts), now + GRAIN)
            self._timer = loop.call_at(self._next, self._due)
