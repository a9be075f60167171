"""The messaging work the bench measures and its memory probe repeats in a child process:
the event, and a bus consumer that handles a stored backlog. Kept apart from both so the
probe's child (`python -m services.bench.memory`) imports only this, not the whole bench."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bus import Bus, Envelope, Event

FETCH_BATCH = 100  # messages in flight: as many as raw nats-py's fetch(100) holds unacked


class BenchEvent(Event, frozen=True):
    __domain__ = "bench"
    __event_name__ = "created"
    title: str
    n: int


def bench_event(i: int) -> BenchEvent:
    return BenchEvent(title=f"benchmark event number {i}", n=i)


def bus_consume(
    durable: str, n: int, bus: Bus, batch: bool = False
) -> Callable[[], Awaitable[None]]:
    """A fresh bus durable handling the `n` stored messages one by one, or in lists of 100."""

    async def consume() -> None:
        finished = asyncio.Event()
        count = 0

        async def one(event: BenchEvent) -> None:
            nonlocal count
            count += 1
            if count >= n:
                finished.set()

        async def many(envelopes: list[Envelope[BenchEvent]]) -> None:
            nonlocal count
            count += len(envelopes)
            if count >= n:
                finished.set()

        if batch:
            consumer = await bus.consume(many, durable=durable, batch_size=FETCH_BATCH)
        else:
            consumer = await bus.consume(one, durable=durable, concurrency=FETCH_BATCH)
        await finished.wait()
        await consumer.stop()

    return consume


async def purge(bus: Bus, stream: str) -> None:
    """Empty `stream`, so the next case reads only what it stores itself."""
    await bus.streams.purge(stream)
