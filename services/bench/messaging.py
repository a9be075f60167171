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
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from bus import Bus, EmbeddedServer, StreamSpec

from .ceiling import consume_ceiling, publish_ceiling
from .memory import Peaks, probe
from .summary import Verdict, at_least
from .workload import FETCH_BATCH, bench_event, bus_consume, purge

STREAM = StreamSpec(name="BENCH", subjects=("bench.>",), dead_letters=True)
# The performance issue's targets (ratio to raw nats-py); None: measured, no target.
TARGETS: dict[str, float | None] = {
    "publish awaited": 0.95,
    "publish pipelined": 2.0,
    "consume + ack": 3.0,
    "consume, batch handler": None,
}
FSYNC_COST = "fsync cost"
BACKLOG_RUNS = 5  # the consumer memory probe's backlog, in runs (100,000 events by default)


class Case(msgspec.Struct):
    name: str
    raw: list[float] = []
    bus: list[float] = []
    ceiling: list[float] = []  # the same work with no library semantics (ceiling.py)

    def ratio(self) -> float:
        return statistics.median(self.bus) / statistics.median(self.raw)

    def summary(self) -> dict[str, object]:
        target = TARGETS.get(self.name)
        row: dict[str, object] = {"case": self.name, "ratio": self.ratio(), "target": target}
        for side in ("raw", "bus", "ceiling"):
            if rates := getattr(self, side):
                row[side] = {
                    "runs": rates,
                    "median": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                }
        return row


async def _rate(n: int, work: Callable[[], Awaitable[None]]) -> float:
    gc.collect()  # the garbage of what ran before is not this case's to collect
    start = time.perf_counter()
    await work()
    return n / (time.perf_counter() - start)


async def run_bench(runs: int, messages: int, sync_interval: str, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    cases = {name: Case(name) for name in TARGETS}
    fsync = Case(FSYNC_COST)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(store_dir=Path(tmp, "a"), sync_interval=sync_interval).start()
        durable = EmbeddedServer(store_dir=Path(tmp, "b"), sync_interval="always").start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            async with (
                Bus(server.url, streams=[STREAM]) as bus,
                Bus(durable.url, streams=[STREAM]) as synced,
            ):
                for run in range(runs):
                    console.print(f"run {run + 1}/{runs}…")
                    await _one_run(run, messages, js, bus, cases)
                    await _pair(run, fsync, *_fsync_cost(messages, bus, synced))
                console.print("memory: a consumer's peak RSS over a small and a large backlog…")
                peaks = await probe(server.url, STREAM, backlog=BACKLOG_RUNS * messages)
            await nc.close()
        finally:
            server.stop()
            durable.stop()
    _report(cases, fsync, peaks, runs, messages, sync_interval, as_json)
    return [_verdict(c) for c in cases.values()]


def _verdict(case: Case) -> Verdict:
    target = TARGETS[case.name]
    if target is None:
        return Verdict("messaging", case.name, f"{case.ratio():.2f}x", "", None)
    return at_least("messaging", case.name, case.ratio(), target, "x")


def _fsync_cost(
    n: int, bus: Bus, synced: Bus
) -> tuple[int, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Awaited bus publishes without, then with, an fsync per write."""
    count = max(100, n // 10)

    async def publish(on: Bus) -> None:
        for i in range(count):
            await on.publish(bench_event(i), f"s{i}")

    return count, lambda: publish(bus), lambda: publish(synced)


async def _one_run(
    run: int, n: int, js: JetStreamContext, bus: Bus, cases: dict[str, Case]
) -> None:
    awaited = max(100, n // 5)  # awaited publish pays one round trip (and fsync) each
    payload = bus.codec.encode(bench_event(0))

    async def raw_awaited() -> None:
        for i in range(awaited):
            await js.publish(f"bench.r{i}.created", payload, headers=_msg_id())

    async def bus_awaited() -> None:
        for i in range(awaited):
            await bus.publish(bench_event(i), f"b{i}")

    async def raw_pipelined() -> None:
        futures = [
            await js.publish_async(f"bench.r{i}.created", payload, headers=_msg_id())
            for i in range(n)
        ]
        await asyncio.gather(*futures)

    async def bus_pipelined() -> None:
        await bus.publish_many((bench_event(i), f"b{i}") for i in range(n))

    await _pair(run, cases["publish awaited"], awaited, raw_awaited, bus_awaited)
    await _pair(run, cases["publish pipelined"], n, raw_pipelined, bus_pipelined)
    cases["publish pipelined"].ceiling.append(await _rate(n, lambda: publish_ceiling(bus, n)))
    # Every consumer reads the same n events published by bus (not whichever mix of raw and
    # bus publishes the run happened to store first: theirs carry fewer headers).
    await purge(bus, STREAM.name)
    await bus.publish_many((bench_event(i), f"c{i}") for i in range(n))
    raw_consume = _raw_consume(f"raw{run}", n, js)
    await _pair(run, cases["consume + ack"], n, raw_consume, bus_consume(f"bus{run}", n, bus))
    ceiling = _rate(n, lambda: consume_ceiling(bus, js, STREAM.name, f"ceiling{run}", n))
    cases["consume + ack"].ceiling.append(await ceiling)
    batched = bus_consume(f"batch{run}", n, bus, batch=True)
    await _pair(run, cases["consume, batch handler"], n, _raw_consume(f"r{run}", n, js), batched)
    await purge(bus, STREAM.name)


def _raw_consume(durable: str, n: int, js: JetStreamContext) -> Callable[[], Awaitable[None]]:
    """A fresh raw nats-py durable fetching and acking the `n` stored messages."""

    async def consume() -> None:
        psub = await js.pull_subscribe("bench.*.created", durable=durable, stream=STREAM.name)
        done = 0
        while done < n:
            for msg in await psub.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                done += 1
        await psub.unsubscribe()

    return consume


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


def _spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def _report(
    cases: dict[str, Case],
    fsync: Case,
    peaks: Peaks,
    runs: int,
    messages: int,
    sync_interval: str,
    as_json: bool,
) -> None:
    if as_json:
        report = {
            "sync_interval": sync_interval,
            "cases": [c.summary() for c in cases.values()],
            "fsync_cost": fsync.summary(),
            "consumer_memory": peaks,
        }
        print(msgspec.json.encode(report).decode())
        return
    table = Table(
        "case",
        "raw nats-py msgs/s",
        "bus msgs/s",
        "ratio",
        "target",
        title=f"median (min-max) of {runs} runs · {messages} messages · "
        f"sync_interval={sync_interval}",
    )
    for c in cases.values():
        ratio, target = c.ratio(), TARGETS[c.name]
        if target is None:
            verdict = "-"
        else:
            verdict = f">= {target}x " + ("[green]ok[/]" if ratio >= target else "[red]below[/]")
        table.add_row(c.name, _spread(c.raw), _spread(c.bus), f"{ratio:.2f}x", verdict)
    console = Console()
    console.print(table)
    for c in cases.values():
        if c.ceiling:
            ceiling = statistics.median(c.ceiling)
            console.print(
                f"ceiling for {c.name} (no ids, no decoding, no results: services/bench/ceiling.py): "
                f"{_spread(c.ceiling)} msgs/s = {ceiling / statistics.median(c.raw):.2f}x raw; "
                f"bus reaches {statistics.median(c.bus) / ceiling:.0%} of it"
            )
    console.print(
        f"fsync cost (bus, awaited): {statistics.median(fsync.raw):,.0f} msgs/s with "
        f"sync_interval=2m, {statistics.median(fsync.bus):,.0f} with always "
        f"({fsync.ratio():.2f}x)"
    )
    console.print(
        f"consumer peak RSS, backlog of {peaks.backlog:,}: {peaks.peak_rss_mb_few:.0f} MB "
        f"handling {peaks.handled_few:,}, {peaks.peak_rss_mb_all:.0f} MB handling all of them"
    )
