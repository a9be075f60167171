"""`bus bench --scenario patterns`: the integration patterns beside what they replace.

Each case is `async (runs, as_json) -> list[Verdict]`; `CASES` lists them, so a pattern's
benchmark joins by being added there (KV and request/reply: services/bench/kv.py, rpc.py). The
workflow case runs the 4-step pipeline's DAG
(`parse` -> `analyze_complexity`, `security_scan` -> `generate_report`) with no-op handlers,
beside the same four steps hand-written as `bus.subscribe` handlers publishing to each other
(the join kept in memory): runs per second and run latency (start to last step done), with
`IN_FLIGHT` runs at a time, on one embedded server. The hand-written side keeps no history,
status or retries. Per run the workflow appends 6 records, each conditional on the run's
last sequence: the start (the first step's task), `parse`'s outcome carrying one analysis's
task, the other analysis's task (another action: its own record), one analysis's outcome,
the other's carrying the report's task, and the run's completion carrying the report's
outcome; 4 of them are delivered (the tasks), and nothing is refused or read, since the
process's deciders take turns on a run. The chain publishes 5 events and delivers 5. What
the workflow does beyond them is the work around each step: its outcome folded once and a
decision on it, the run's turn, larger records to encode and decode. The server syncs to disk
as nats-server does by default (every 2 minutes), as the messaging, KV and security
scenarios run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from bus import App, Bus, EmbeddedServer, Event, RunContext, Step, StreamSpec, Workflow, Workflows

from .kv import run_kv_bench
from .rpc import run_rpc_bench
from .summary import Verdict, at_least

Case = Callable[[int, bool], Awaitable[list[Verdict]]]
RUNS_PER_ROUND = 400
IN_FLIGHT = 64
TARGET = 0.5


class Source(msgspec.Struct):
    code: str = "x = 1"


def _source(ctx: RunContext[Source]) -> Source:
    return ctx.input


def pipeline_app() -> App:
    """The pipeline's DAG with handlers that do nothing."""
    app = App("benchpipeline")
    app.workflow(
        Workflow("noop_pipeline", Source, [
            Step("parse", "noop_parse", input=_source),
            Step("analyze_complexity", "noop_complexity", ("parse",), _source),
            Step("security_scan", "noop_security", ("parse",), _source),
            Step("generate_report", "noop_report", ("analyze_complexity", "security_scan"),
                 _source),
        ])
    )  # fmt: skip

    async def noop(source: Source) -> str:
        return "ok"

    for action in ("noop_parse", "noop_complexity", "noop_security", "noop_report"):
        app.action(action, concurrency=IN_FLIGHT)(noop)
    return app


class Requested(Event):
    __domain__ = "handrun"
    __event_name__ = "requested"
    code: str


class Parsed(Event):
    __domain__ = "handrun"
    __event_name__ = "parsed"
    code: str


class Measured(Event):
    __domain__ = "handrun"
    __event_name__ = "measured"
    part: str


class Reported(Event):
    __domain__ = "handrun"
    __event_name__ = "reported"


def hand_written(bus: Bus) -> None:
    """The same four steps as plain handlers: parse, the two analyses, the report (which
    waits for both analyses of a run: an in-memory join)."""
    halves: dict[str, int] = {}

    def run_of(envelope: Any) -> str:
        return str(envelope.subject.split(".")[1])

    @bus.subscribe(durable="hand-parse", concurrency=IN_FLIGHT)
    async def parse(event: Requested, envelope: Any) -> None:
        await bus.publish(Parsed(code=event.code), run_of(envelope))

    def analysis(part: str) -> Callable[[Parsed, Any], Awaitable[None]]:
        async def analyse(event: Parsed, envelope: Any) -> None:
            await bus.publish(Measured(part=part), run_of(envelope))

        return analyse

    for part in ("complexity", "security"):
        bus.subscribe(durable=f"hand-{part}", concurrency=IN_FLIGHT)(analysis(part))

    @bus.subscribe(durable="hand-report", concurrency=IN_FLIGHT)
    async def report(event: Measured, envelope: Any) -> None:
        run = run_of(envelope)
        halves[run] = halves.get(run, 0) + 1
        if halves[run] == 2:
            del halves[run]
            await bus.publish(Reported(), run)


async def _round(
    bus: Bus, start: Callable[[int], Awaitable[str]], done_subject: str, n: int
) -> tuple[float, list[float]]:
    """Start `n` runs, IN_FLIGHT at a time; (runs/s, each run's latency in seconds)."""
    started: dict[str, float] = {}
    latencies: list[float] = []
    finished = asyncio.Event()
    room = asyncio.Semaphore(IN_FLIGHT)

    early: dict[str, float] = {}  # runs done before their start call returned

    def done(run_id: str, at: float) -> None:
        latencies.append(at - started.pop(run_id))
        room.release()
        if len(latencies) == n:
            finished.set()

    def on_done(subject: str) -> None:
        run_id = subject.split(".")[1]
        if run_id in started:
            done(run_id, time.perf_counter())
        else:
            early[run_id] = time.perf_counter()

    stream = await bus.stream_for(done_subject)
    since = (await bus.streams.info(stream)).last_seq + 1  # nothing of this round is missed

    async def watch() -> None:
        async with contextlib.aclosing(bus.tail(done_subject, since)) as done:
            async for message in done:
                on_done(message.subject)

    watching = asyncio.create_task(watch())

    async def launch(i: int) -> None:
        at = time.perf_counter()
        run_id = await start(i)
        started[run_id] = at
        if run_id in early:
            done(run_id, early.pop(run_id))

    begin = time.perf_counter()
    launches = []
    for i in range(n):
        await room.acquire()
        launches.append(asyncio.create_task(launch(i)))
    await asyncio.gather(*launches)
    await asyncio.wait_for(finished.wait(), 120)
    elapsed = time.perf_counter() - begin
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    return n / elapsed, latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


SYNC_INTERVAL = "2m"  # nats-server's default, as the other scenarios' servers


async def workflow_case(runs: int, as_json: bool) -> list[Verdict]:
    """Workflow runs/s and latency beside the hand-written chain."""
    rows: dict[str, list[tuple[float, float, float]]] = {"workflow": [], "hand-written": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=Path(tmp), sync_interval=SYNC_INTERVAL) as server,
    ):
        app = pipeline_app()
        async with Bus(server.url, registry=app.registry, streams=app.streams,
                       router=app.router) as bus:  # fmt: skip
            flows = Workflows(bus, app)

            async def start_run(i: int) -> str:
                return (await flows.start("noop_pipeline", Source())).run_id

            hand = Bus(server.url, streams=[StreamSpec.for_domain("handrun")])
            hand_written(hand)
            async with hand:
                counter = [0]

                async def start_hand(i: int) -> str:
                    counter[0] += 1
                    run_id = f"h{counter[0]}"
                    await hand.publish(Requested(code="x = 1"), run_id)
                    return run_id

                await _round(bus, start_run, "wf.*.completed", 50)  # warm up both
                await _round(hand, start_hand, "handrun.*.reported", 50)
                for _ in range(runs):
                    for name, (b, start, done) in {
                        "workflow": (bus, start_run, "wf.*.completed"),
                        "hand-written": (hand, start_hand, "handrun.*.reported"),
                    }.items():
                        rate, lat = await _round(b, start, done, RUNS_PER_ROUND)
                        rows[name].append((rate, _pct(lat, 50), _pct(lat, 99)))
    return _report(rows, as_json)


def _report(rows: dict[str, list[tuple[float, float, float]]], as_json: bool) -> list[Verdict]:
    med = {
        name: [statistics.median(col) for col in zip(*r, strict=True)] for name, r in rows.items()
    }
    ratio = med["workflow"][0] / med["hand-written"][0]
    if as_json:
        figures = {name: {"runs_per_s": m[0], "p50_s": m[1], "p99_s": m[2],
                          "runs_per_s_each": [x[0] for x in rows[name]]}
                   for name, m in med.items()}  # fmt: skip
        print(json.dumps({"scenario": "patterns", "workflow": figures, "ratio": ratio}))
    else:
        table = Table("case", "runs/s (median, min-max)", "p50 ms", "p99 ms",
                      title=f"patterns: 4-step pipeline, {RUNS_PER_ROUND} runs x {len(rows['workflow'])}, "
                      f"{IN_FLIGHT} in flight")  # fmt: skip
        for name, r in rows.items():
            rates = [x[0] for x in r]
            table.add_row(name, f"{med[name][0]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
                          f"{med[name][1] * 1e3:.1f}", f"{med[name][2] * 1e3:.1f}")  # fmt: skip
        table.caption = f"workflow / hand-written runs/s: {ratio:.2f}x (target >= {TARGET}x)"
        Console().print(table)
    return [at_least("patterns", "workflow runs/s vs hand-written", ratio, TARGET, "x")]


CASES: list[Case] = [workflow_case, run_kv_bench, run_rpc_bench]


async def run_patterns_bench(runs: int, as_json: bool) -> list[Verdict]:
    """Every case of the scenario, in turn."""
    verdicts: list[Verdict] = []
    for case in CASES:
        verdicts += await case(runs, as_json)
    return verdicts
