"""An app whose handler takes its time, for the shutdown tests (`--app tests.chaos.slow_app:app`).

The handler records what it does as events in the stream itself: `started` when it begins a
job, `finished` when done, each with the worker's pid, so a test reads who did what.
"""

from __future__ import annotations

import asyncio
import os

from bus import App, Envelope, Event, StreamSpec, current_bus

ACK_WAIT = 3.0  # a job held by a worker that went away is redelivered after this


class Job(Event):
    __domain__ = "slow"
    __event_name__ = "queued"
    seconds: float


class Started(Event):
    __domain__ = "slow"
    __event_name__ = "started"
    pid: int


class Finished(Event):
    __domain__ = "slow"
    __event_name__ = "finished"
    pid: int


app = App(
    "slow",
    streams=[StreamSpec.for_domain("slow")],
    events=[Job, Started, Finished],
)


@app.subscribe(durable="slow-worker", concurrency=4, ack_wait=ACK_WAIT)
async def work(event: Job, envelope: Envelope[Job]) -> None:
    bus = current_bus()
    job = envelope.subject.split(".")[1]
    await bus.publish(Started(pid=os.getpid()), job)
    await asyncio.sleep(event.seconds)
    await bus.publish(Finished(pid=os.getpid()), job)
