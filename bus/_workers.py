"""Handler workers: a fixed number of long-lived tasks fed from a queue, not a task per job.

A handler that never waits costs no task, no awaitable and no trip through the event loop:
its one step runs in the worker, and jobs run back to back, the loop getting a turn every
`YIELD_EVERY` jobs so that what they settled (acks, the next pull) goes out while the rest
are handled. A worker that leaves jobs behind rouses the next, so handlers that do wait
overlap, up to the number of workers. Each job still runs as a task of its own would: in a
fresh copy of the starter's context (what it sets in a context variable stays its own), in
a task it has to itself while it waits (so `asyncio.timeout` cancels that job alone).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

J = TypeVar("J")
log = logging.getLogger("bus.consumer")
YIELD_EVERY = 32  # jobs a worker runs back to back before the loop gets a turn
_WEIGHT = 0.05  # of the newest job in `seconds_per_job`


class Workers(Generic[J]):
    """Runs `handle(job)` for every job `put`, then `done(job)`, in `count` worker tasks."""

    def __init__(
        self,
        count: int,
        handle: Callable[[J], Coroutine[Any, Any, None]],
        done: Callable[[J], None],
        name: str,
    ) -> None:
        self._count, self._handle, self._done, self._name = count, handle, done, name
        self._ready: deque[J] = deque()
        self._sleepers: deque[asyncio.Future[None]] = deque()  # idle workers' wake-ups
        self._rousing = False  # a worker was woken and has not looked at the queue yet
        self._tasks: list[asyncio.Task[None]] = []
        self._context = contextvars.copy_context()
        self.seconds_per_job = 0.0  # a moving mean of how long a job takes; 0 until one has

    def start(self) -> None:
        """Start the workers; jobs run in copies of the caller's context."""
        self._context = contextvars.copy_context()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"handle {self._name}")
            for _ in range(self._count)
        ]

    def put(self, job: J) -> None:
        self._ready.append(job)
        self._rouse()

    def stop(self) -> None:
        """Cancel the workers; jobs still queued are dropped (their messages redelivered)."""
        for task in self._tasks:
            task.cancel()

    def _rouse(self) -> None:
        """Wake one sleeping worker, unless one is already on its way."""
        while not self._rousing and self._sleepers:
            wake_up = self._sleepers.popleft()
            if not wake_up.done():  # (a stopped worker's is cancelled)
                self._rousing = True
                wake_up.set_result(None)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        in_a_row = 0
        while True:
            if not self._ready:
                wake_up = loop.create_future()
                self._sleepers.append(wake_up)
                await wake_up
                self._rousing = False
                in_a_row = 0
                continue
            if in_a_row == YIELD_EVERY:
                in_a_row = 0
                await asyncio.sleep(0)
                continue
            in_a_row += 1
            job = self._ready.popleft()
            if self._ready:
                self._rouse()
            started = clock()
            coro, context = self._handle(job), self._context.copy()
            try:
                step = context.run(coro.send, None)  # most jobs end in their first step
            except StopIteration:
                pass
            except Exception:  # a bug of ours: say so, and keep the worker
                log.exception("consumer %s: handling a message failed", self._name)
            else:
                await self._resume(job, coro, context, step, started)
                continue
            self._finish(job, clock() - started)

    async def _resume(
        self,
        job: J,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
        step: Any,
        started: float,
    ) -> None:
        """The rest of a job that waits: awaited in the worker's task, in the job's context."""
        try:
            await _InContext(coro, context, step)
        except Exception:  # a bug of ours: say so, and keep the worker
            log.exception("consumer %s: handling a message failed", self._name)
        finally:
            self._finish(job, time.perf_counter() - started)

    def _finish(self, job: J, took: float) -> None:
        mean = self.seconds_per_job
        self.seconds_per_job = mean + (took - mean) * _WEIGHT if mean else took
        self._done(job)


class _InContext:
    """Awaits the rest of a started coroutine (its first step yielded `step`), each step run
    in `context` as a task of its own would run it (its context variables stay its own),
    inside the worker's task."""

    __slots__ = ("_context", "_coro", "_step")

    def __init__(self, coro: Coroutine[Any, Any, None], context: contextvars.Context, step: Any):
        self._coro, self._context, self._step = coro, context, step

    def __await__(self) -> Generator[Any, Any, None]:
        run, send, throw = self._context.run, self._coro.send, self._coro.throw
        step = self._step
        while True:
            try:
                value, error = (yield step), None
            except BaseException as exc:  # cancellation, thrown in by the worker's task
                value, error = None, exc
            try:
                step = run(send, value) if error is None else run(throw, error)
            except StopIteration:
                return
