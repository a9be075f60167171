"""`python -m services.bench.pages`: the console's stream pages on a stream of a million
events beside the same pages of a stream of a thousand, on one embedded server.

A page is read by sequence (the first from sequence 1, the last newest first from the end,
and the last of one aggregate's events through a subject filter), never by scanning, so a
big stream's pages should cost what a small one's do: the figure is, per page, the median
over the runs of the big stream's time over the small one's, the two measured in turns.
The filtered page has no target: on the big stream its 50 events lie 1,000 sequences apart
(windows doubling below the end find them, a round trip or two each), on the small one there
is a single event.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from bus import Bus, EmbeddedServer, Event, StreamSpec
from services.edge.catalogue import stream_page
from services.edge.stream_reads import newest_first

from .summary import Verdict, at_most

BIG, SMALL = 1_000_000, 1_000
PAGE = 50
TURNS = 200  # reads of each page per run and side
TARGET = 1.5


class BigCreated(Event):
    __domain__ = "big"
    __event_name__ = "created"
    n: int


class SmallCreated(Event):
    __domain__ = "small"
    __event_name__ = "created"
    n: int


async def _fill(bus: Bus, event: type[BigCreated | SmallCreated], count: int) -> None:
    """`count` events over a thousand aggregates, pipelined ten thousand at a time."""
    for start in range(0, count, 10_000):
        numbers = range(start, min(count, start + 10_000))
        await bus.publish_many((event(n=n), f"a{n % 1000}") for n in numbers)


async def _time(read: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for _ in range(TURNS):
        await read()
    return (time.perf_counter() - started) / TURNS * 1000


async def run_pages_bench(runs: int = 5) -> list[Verdict]:
    streams = [StreamSpec("PAGESBIG", ("big.*.*",)), StreamSpec("PAGESSMALL", ("small.*.*",))]
    with (
        tempfile.TemporaryDirectory() as store,
        EmbeddedServer(store_dir=Path(store), sync_interval="2m") as server,
    ):
        async with Bus(server.url, streams=streams) as bus:
            bus.registry.register(BigCreated)
            bus.registry.register(SmallCreated)
            await _fill(bus, SmallCreated, SMALL)
            await _fill(bus, BigCreated, BIG)

            def first(name: str, _: str) -> Awaitable[Any]:
                return stream_page(bus, name, 1, PAGE)

            def last(name: str, _: str) -> Awaitable[Any]:
                return newest_first(bus, name, None, PAGE, None)

            def last_of_one(name: str, domain: str) -> Awaitable[Any]:
                return newest_first(bus, name, None, PAGE, f"{domain}.a7.*")

            pages = {
                "first page": first,
                "last page": last,
                "last page, one aggregate": last_of_one,
            }
            verdicts = []
            for label, page in pages.items():
                ratios, small_ms, big_ms = [], [], []
                for _ in range(runs):
                    small = await _time(functools.partial(page, "PAGESSMALL", "small"))
                    big = await _time(functools.partial(page, "PAGESBIG", "big"))
                    ratios.append(big / small)
                    small_ms.append(small)
                    big_ms.append(big)
                print(
                    f"{label}: {BIG:,} events {statistics.median(big_ms):.2f} ms, {SMALL:,} "
                    f"events {statistics.median(small_ms):.2f} ms; ratio median "
                    f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
                )
                ratio, measure = statistics.median(ratios), f"{label}: 1M / 1k"
                if page is last_of_one:  # 50 matches over 50,000 sequences beside 1 in 1,000
                    verdicts.append(Verdict("pages", measure, f"{ratio:.2f}x", "", None))
                else:
                    verdicts.append(at_most("pages", measure, ratio, TARGET, "x"))
    return verdicts


if __name__ == "__main__":
    results = asyncio.run(run_pages_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
    for verdict in results:
        print(msgspec.json.encode(verdict).decode())
