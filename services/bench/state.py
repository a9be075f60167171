"""`bus bench --scenario state`: the event store and projections beside raw nats-py.

- appends with optimistic concurrency across 1,000 aggregates (pipelined rounds, each event
  guarded by its aggregate's expected version), beside raw `publish_async` with the same
  headers;
- loading an aggregate of 1,000 events, with and without a snapshot;
- rebuilding a projection of `--events` events (default 1,000,000) beside a raw nats-py
  ordered-consumer replay with msgspec decode of the same stream. Each replay runs in a
  fresh child process, so its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import DeliverPolicy
from rich.console import Console
from rich.table import Table

from bus import (
    Aggregate,
    Bus,
    EmbeddedServer,
    Envelope,
    Event,
    Projection,
    ProjectionView,
    Projector,
    Repository,
    StreamSpec,
)
from services.runtime.lifecycle import run

from .memory import peak_rss_mb
from .summary import Verdict, at_least, at_most

DOMAIN, REPLAY = "bst", "brb"
STREAM, REPLAY_STREAM = StreamSpec.for_domain(DOMAIN), StreamSpec.for_domain(REPLAY)
AGGREGATES = 1000


class Ticked(Event, frozen=True):
    __domain__ = DOMAIN
    __event_name__ = "ticked"
    n: int
    note: str = "a benchmark event"


class Replayed(Event, frozen=True):
    __domain__ = REPLAY
    __event_name__ = "ticked"
    n: int
    note: str = "a benchmark event"


class Tally(msgspec.Struct):
    ticks: int = 0
    total: int = 0


def tally(state: Tally, envelope: Envelope[Event]) -> Tally:
    return Tally(state.ticks + 1, state.total + envelope.event.n)  # type: ignore[attr-defined]


class Counter(Aggregate[Tally]):
    __domain__ = DOMAIN
    State = Tally

    @staticmethod
    def evolve(state: Tally, event: Event) -> Tally:
        return Tally(state.ticks + 1, state.total + event.n)  # type: ignore[attr-defined]

    def tick(self, times: int) -> None:
        """A command: `times` more ticks, numbered on from the ones it has."""
        first = self.state.ticks
        for n in range(first, first + times):
            self.record(Ticked(n=n))


def aggregate_key(envelope: Envelope[Event]) -> str:
    return envelope.subject.split(".")[1]


async def _occ_round(bus: Bus, versions: dict[str, int], round_no: int) -> None:
    outs = [
        bus.publisher.prepare(Ticked(n=round_no), agg, expected_version=version)
        for agg, version in versions.items()
    ]
    for agg, result in zip(versions, await bus.publisher.send_many(outs), strict=True):
        versions[agg] = result.seq  # type: ignore[union-attr]


async def _occ_raw_round(js: Any, payload: bytes, versions: dict[str, int]) -> None:
    futures = []
    for agg, version in versions.items():
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(version),
            "Nats-Expected-Last-Subject-Sequence-Subject": f"{DOMAIN}.{agg}.*",
        }
        futures.append(await js.publish_async(f"{DOMAIN}.{agg}.ticked", payload, headers=headers))
    for agg, ack in zip(versions, await asyncio.gather(*futures), strict=True):
        versions[agg] = ack.seq


async def _occ(bus: Bus, js: Any, rounds: int, prefix: str) -> tuple[float, float]:
    """(bus events/s, raw events/s) appending `rounds` events to each of 1,000 aggregates."""
    ours = {f"{prefix}b{i}": 0 for i in range(AGGREGATES)}
    raw = {f"{prefix}r{i}": 0 for i in range(AGGREGATES)}
    payload = bus.codec.encode(Ticked(n=0))
    start = time.perf_counter()
    for r in range(rounds):
        await _occ_round(bus, ours, r)
    bus_rate = rounds * AGGREGATES / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(rounds):
        await _occ_raw_round(js, payload, raw)
    return bus_rate, rounds * AGGREGATES / (time.perf_counter() - start)


async def _load_ms(bus: Bus, prefix: str) -> tuple[float, float]:
    """(ms without snapshot, ms with) to load an aggregate of 1,000 events."""
    agg = f"{prefix}big"
    plain, snapshotting = Repository(bus, Counter), Repository(bus, Counter, snapshot_every=100)
    for _ in range(10):  # saved 100 at a time: each save snapshots, the last at all 1,000
        await snapshotting.update(agg, lambda counter: counter.tick(100))
    timings = []
    for repo in (plain, snapshotting):
        start = time.perf_counter()
        loaded = await repo.get(agg)
        timings.append((time.perf_counter() - start) * 1000)
        assert loaded.state.ticks == 1000
    return timings[0], timings[1]


def _replay_in_child(kind: str, url: str, events: int, name: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", __name__, kind, url, str(events), name],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def _child(kind: str, url: str, events: int, name: str) -> None:
    if kind == "ours":
        async with Bus(url) as bus:
            bus.registry.register(Replayed)
            projection = Projection(name, (f"{REPLAY}.>",), Tally, aggregate_key, tally, 5000)
            start = time.perf_counter()
            async with Projector(bus, [projection]):
                await ProjectionView(bus, projection).wait_for(events, timeout=3600)
            elapsed = time.perf_counter() - start
    else:
        nc = await nats.connect(url)
        decode = msgspec.json.Decoder(Replayed).decode
        counts: dict[str, int] = {}
        done = asyncio.Event()
        seen = 0

        async def handle(msg: Any) -> None:
            nonlocal seen
            event = decode(msg.data)
            key = msg.subject.split(".")[1]
            counts[key] = counts.get(key, 0) + event.n
            seen += 1
            if seen >= events:
                done.set()

        start = time.perf_counter()
        sub = await nc.jetstream().subscribe(
            f"{REPLAY}.>", cb=handle, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        await done.wait()
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
        await nc.close()
    print(json.dumps({"rate": events / elapsed, "peak_rss_mb": peak_rss_mb()}))


async def run_state_bench(runs: int, events: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    occ: list[tuple[float, float]] = []
    loads: list[tuple[float, float]] = []
    rebuilds: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(store_dir=Path(tmp), sync_interval="2m").start()
        try:
            nc = await nats.connect(server.url)
            async with Bus(server.url, streams=[STREAM, REPLAY_STREAM]) as bus:
                bus.registry.register(Ticked)
                for run in range(runs):
                    console.print(f"run {run + 1}/{runs}: appends and loads…")
                    occ.append(await _occ(bus, nc.jetstream(), 10, f"o{run}"))
                    loads.append(await _load_ms(bus, f"l{run}"))
                console.print(f"publishing {events:,} events for the rebuild…")
                for start in range(0, events, 10_000):
                    count = min(10_000, events - start)
                    await bus.publish_many(
                        (Replayed(n=i), f"k{i % AGGREGATES}") for i in range(start, start + count)
                    )
            await nc.close()
            for run in range(runs):
                console.print(f"run {run + 1}/{runs}: rebuild of {events:,} events…")
                raw = _replay_in_child("raw", server.url, events, "raw")
                ours = _replay_in_child("ours", server.url, events, f"rebuild{run}")
                rebuilds.append((ours, raw))
        finally:
            server.stop()
    return _report(occ, loads, rebuilds, events, as_json)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _report(
    occ: list[tuple[float, float]],
    loads: list[tuple[float, float]],
    rebuilds: list[tuple[dict[str, float], dict[str, float]]],
    events: int,
    as_json: bool,
) -> list[Verdict]:
    result = {
        "occ_appends": {
            "bus_events_per_s": _median([o[0] for o in occ]),
            "raw_events_per_s": _median([o[1] for o in occ]),
            "target_events_per_s": 40_000,
        },
        "load_1000_events_ms": {
            "without_snapshot": _median([ld[0] for ld in loads]),
            "with_snapshot": _median([ld[1] for ld in loads]),
        },
        "rebuild": {
            "events": events,
            "bus_events_per_s": _median([r[0]["rate"] for r in rebuilds]),
            "raw_events_per_s": _median([r[1]["rate"] for r in rebuilds]),
            "bus_peak_rss_mb": max(r[0]["peak_rss_mb"] for r in rebuilds),
            "raw_peak_rss_mb": max(r[1]["peak_rss_mb"] for r in rebuilds),
            "target_ratio": 0.8,
            "target_peak_rss_mb": 300,
        },
    }
    o, ld, rb = result["occ_appends"], result["load_1000_events_ms"], result["rebuild"]
    verdicts = [
        at_least("state", "OCC appends, 1,000 aggregates", o["bus_events_per_s"], 40_000, "ev/s"),
        Verdict("state", "load 1,000 events, snapshot / none",
                f"{ld['with_snapshot']:.1f} / {ld['without_snapshot']:.1f} ms", "", None),
        at_least("state", f"rebuild {events:,} events vs raw",
                 rb["bus_events_per_s"] / rb["raw_events_per_s"], 0.8, "x"),
        at_most("state", "rebuild peak RSS", rb["bus_peak_rss_mb"], 300, "MB"),
    ]  # fmt: skip
    if as_json:
        print(json.dumps(result))
        return verdicts
    table = Table("scenario", "bus", "raw nats-py", "ratio", "target", title="state (medians)")
    table.add_row(
        "OCC appends, 1,000 aggregates",
        f"{o['bus_events_per_s']:,.0f} ev/s",
        f"{o['raw_events_per_s']:,.0f} ev/s",
        f"{o['bus_events_per_s'] / o['raw_events_per_s']:.2f}x",
        ">= 40,000 ev/s",
    )
    table.add_row(
        "load 1,000 events",
        f"{ld['with_snapshot']:.1f} ms with snapshot",
        f"{ld['without_snapshot']:.1f} ms without",
        "",
        "",
    )
    table.add_row(
        f"rebuild {events:,} events",
        f"{rb['bus_events_per_s']:,.0f} ev/s, {rb['bus_peak_rss_mb']:.0f} MB",
        f"{rb['raw_events_per_s']:,.0f} ev/s, {rb['raw_peak_rss_mb']:.0f} MB",
        f"{rb['bus_events_per_s'] / rb['raw_events_per_s']:.2f}x",
        ">= 0.8x, < 300 MB",
    )
    Console().print(table)
    return verdicts


if __name__ == "__main__":
    run(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
