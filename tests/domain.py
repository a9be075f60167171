"""Events shared by the tests: a small "jobs" domain (the demo's "tasks" is the CLI's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bus import Event, StreamSpec

JOBS = StreamSpec.for_domain("jobs", duplicate_window=1.0)


class JobCreated(Event):
    __domain__ = "jobs"
    __event_name__ = "created"
    title: str
    fail_times: int = 0


class JobDone(Event):
    __domain__ = "jobs"
    __event_name__ = "done"
    result: str = ""


async def eventually(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Wait until `predicate()` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
