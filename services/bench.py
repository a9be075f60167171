"""`bus bench`: bus beside raw nats-py doing the same work on the same server, in one run.

Each case runs raw and bus alternately first (noise on a shared machine hits both alike) and
prints msgs/s, the median of `runs`, and the ratio bus/raw. Raw publishes carry a
`Nats-Msg-Id`, as dedupe needs; bus publishes carry the full header set and encode a Struct.

The comparison runs on a server with nats-server's default `sync_interval` (2m), where the
client is the bottleneck; with `always` (our production default) every write waits for an
fsync and both sides measure the disk. A last row prices that durability: awaited publishes
on a second server with `sync_interval: always`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import nats
from rich.console import Console
from rich.table import Table

from bus import Bus, EmbeddedServer, Event, StreamSpec

STREAM = StreamSpec(name="BENCH", subjects=("bench.>",), dead_letters=True)
TARGETS = {"publish awaited": 0.95, "publish pipelined": 1.0, "consume + ack": 1.5}
FSYNC_COST = "fsync cost"
FETCH_BATCH = 100


class BenchEvent(Event):
    __domain__ = "bench"
    __event_name__ = "created"
    title: str
    n: int


def _event(i: int) -> BenchEvent:
    return BenchEvent(title=f"benchmark event number {i}", n=i)


class Case(msgspec.Struct):
    name: str
    raw: list[float] = []
    bus: list[float] = []

    def ratio(self) -> float:
        return statistics.median(self.bus) / statistics.median(self.raw)


async def _rate(n: int, work: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await work()
    return n / (time.perf_counter() - start)


async def run_bench(runs: int, messages: int, sync_interval: str, as_json: bool) -> None:
    console = Console(stderr=True)
    cases = {name: Case(name) for name in TARGETS}
    fsync = Case(FSYNC_COST)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(store_dir=f"{tmp}/a", sync_interval=sync_interval).start()
        durable = EmbeddedServer(store_dir=f"{tmp}/b", sync_interval="always").start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            async with (
                Bus(server.url, streams=[STREAM]) as bus,
                Bus(durable.url, streams=[STREAM]) as synced,
            ):
                for run in range(runs):
                    console.print(f"run {run + 1}/{runs}…")
                    await _one_run(run, messages, nc, js, bus, cases)
                    await _pair(run, fsync, *_fsync_cost(messages, bus, synced))
            await nc.close()
        finally:
            server.stop()
            durable.stop()
    _report(cases, fsync, runs, messages, sync_interval, as_json)


def _fsync_cost(
    n: int, bus: Bus, synced: Bus
) -> tuple[int, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Awaited bus publishes without, then with, an fsync per write."""
    count = max(100, n // 10)

    async def publish(on: Bus) -> None:
        for i in range(count):
            await on.publish(_event(i), f"s{i}")

    return count, lambda: publish(bus), lambda: publish(synced)


async def _one_run(
    run: int, n: int, nc: nats.NATS, js: object, bus: Bus, cases: dict[str, Case]
) -> None:
    awaited = max(100, n // 5)  # awaited publish pays one round trip (and fsync) each
    payload = bus.codec.encode(_event(0))

    async def raw_awaited() -> None:
        for i in range(awaited):
            await js.publish(f"bench.r{i}.created", payload, headers=_msg_id())  # type: ignore[attr-defined]

    async def bus_awaited() -> None:
        for i in range(awaited):
            await bus.publish(_event(i), f"b{i}")

    async def raw_pipelined() -> None:
        futures = [
            await js.publish_async(f"bench.r{i}.created", payload, headers=_msg_id())  # type: ignore[attr-defined]
            for i in range(n)
        ]
        await asyncio.gather(*futures)

    async def bus_pipelined() -> None:
        await bus.publish_many((_event(i), f"b{i}") for i in range(n))

    await _pair(run, cases["publish awaited"], awaited, raw_awaited, bus_awaited)
    await _pair(run, cases["publish pipelined"], n, raw_pipelined, bus_pipelined)
    await _pair(run, cases["consume + ack"], n, *await _consumers(run, n, js, bus))
    await bus.js.purge_stream(STREAM.name)


async def _consumers(
    run: int, n: int, js: object, bus: Bus
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Two fresh durables over the same `n` stored messages."""
    await bus.publish_many((_event(i), f"c{i}") for i in range(n))
    subject = "bench.*.created"

    async def raw_consume() -> None:
        psub = await js.pull_subscribe(subject, durable=f"raw{run}", stream=STREAM.name)  # type: ignore[attr-defined]
        done = 0
        while done < n:
            for msg in await psub.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                done += 1
        await psub.unsubscribe()

    async def bus_consume() -> None:
        finished = asyncio.Event()
        count = 0

        async def handle(event: BenchEvent) -> None:
            nonlocal count
            count += 1
            if count >= n:
                finished.set()

        # As many messages in flight as raw's fetch(100) holds unacknowledged.
        consumer = await bus.consume(handle, durable=f"bus{run}", concurrency=FETCH_BATCH)
        await finished.wait()
        await consumer.stop()

    return raw_consume, bus_consume


async def _pair(
    run: int,
    case: Case,
    n: int,
    raw: Callable[[], Awaitable[None]],
    ours: Callable[[], Awaitable[None]],
) -> None:
    if run % 2 == 0:
        case.raw.append(await _rate(n, raw))
        case.bus.append(await _rate(n, ours))
    else:
        case.bus.append(await _rate(n, ours))
        case.raw.append(await _rate(n, raw))


def _msg_id() -> dict[str, str]:
    return {"Nats-Msg-Id": str(uuid.uuid4())}


def _report(
    cases: dict[str, Case], fsync: Case, runs: int, messages: int, sync_interval: str, as_json: bool
) -> None:
    if as_json:
        rows = [
            {
                "case": c.name,
                "raw_msgs_per_s": c.raw,
                "bus_msgs_per_s": c.bus,
                "raw_median": statistics.median(c.raw),
                "bus_median": statistics.median(c.bus),
                "ratio": c.ratio(),
                "target": TARGETS[c.name],
            }
            for c in cases.values()
        ]
        fsync_row = {
            "sync_2m_msgs_per_s": statistics.median(fsync.raw),
            "sync_always_msgs_per_s": statistics.median(fsync.bus),
            "ratio": fsync.ratio(),
        }
        report = {"sync_interval": sync_interval, "cases": rows, "fsync_cost": fsync_row}
        print(msgspec.json.encode(report).decode())
        return
    table = Table(
        "case",
        "raw nats-py msgs/s",
        "bus msgs/s",
        "ratio",
        "target",
        title=f"median of {runs} runs · {messages} messages · sync_interval={sync_interval}",
    )
    for c in cases.values():
        ratio = c.ratio()
        mark = "[green]ok[/]" if ratio >= TARGETS[c.name] else "[red]below[/]"
        table.add_row(
            c.name,
            f"{statistics.median(c.raw):,.0f}",
            f"{statistics.median(c.bus):,.0f}",
            f"{ratio:.2f}x",
            f">= {TARGETS[c.name]}x {mark}",
        )
    Console().print(table)
    Console().print(
        f"fsync cost (bus, awaited): {statistics.median(fsync.raw):,.0f} msgs/s with "
        f"sync_interval=2m, {statistics.median(fsync.bus):,.0f} with always "
        f"({fsync.ratio():.2f}x)"
    )
