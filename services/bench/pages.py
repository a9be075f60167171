"""`python -m services.bench.pages`: the console's stream pages on a stream of a million
events beside the same pages of a stream of a thousand, on one embedded server.

A page is read by sequence (the first from sequence 1, the last newest first from the end,
and the last of one aggregate's events through a subject filter), never by scanning, so a
big stream's pages should cost what a small one's do: the figure is, per page, the median
over the runs of the big stream's time over the small one's, the two measured in turns.
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
import nats

from bus import Bus, EmbeddedServer, StreamSpec
from services.edge.catalogue import stream_page
from services.edge.stream_reads import newest_first

from .summary import Verdict, at_most

BIG, SMALL = 1_000_000, 1_000
PAGE = 50
TURNS = 200  # reads of each page per run and side
TARGET = 1.5
WINDOW = 2000  # events published per acked window while filling


async def _fill(url: str, stream: str, domain: str, count: int) -> None:
    """`count` events on `<domain>.<id>.created`, a thousand aggregates, in windows: core
    publishes (no ack each) closed by one acked publish, which comes once the server has
    stored the window (it handles one connection's messages in order), so its ingest queue
    never overflows."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for n in range(count):
            subject, body = f"{domain}.a{n % 1000}.created", msgspec.json.encode({"n": n})
            if n % WINDOW == WINDOW - 1 or n == count - 1:
                await js.publish(subject, body, stream=stream, timeout=60)
            else:
                await nc.publish(subject, body)
        stored = (await js.stream_info(stream)).state.messages
        if stored != count:
            raise SystemExit(f"{stream} holds {stored} events, not {count}")
    finally:
        await nc.close()


async def _time(read: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for _ in range(TURNS):
        await read()
    return (time.perf_counter() - started) / TURNS * 1000


async def run_pages_bench(runs: int = 5) -> list[Verdict]:
    streams = [StreamSpec("PAGESBIG", ("big.*.*",)), StreamSpec("PAGESSMALL", ("small.*.*",))]
    with tempfile.TemporaryDirectory() as store, EmbeddedServer(store_dir=Path(store)) as server:
        async with Bus(server.url, streams=streams) as bus:
            await _fill(server.url, "PAGESSMALL", "small", SMALL)
            await _fill(server.url, "PAGESBIG", "big", BIG)

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
                ratio = statistics.median(ratios)
                verdicts.append(at_most("pages", f"{label}: 1M / 1k", ratio, TARGET, "x"))
    return verdicts


if __name__ == "__main__":
    results = asyncio.run(run_pages_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
    for verdict in results:
        print(msgspec.json.encode(verdict).decode())
