"""`python -m services.bench.rpc`: request/reply through `bus.request` (its circuit breaker
on) beside raw nats-py `nc.request`, to the same responder on one embedded server.

The responder (a `bus.serve` endpoint echoing a small Struct) runs in a child process, so the
callers' own cost is what differs: requests/s with one caller awaiting each reply, and with
CALLERS callers at once. Both sides encode the request Struct and decode the reply with
msgspec (what any caller does); bus also validates the subject, asks the endpoint's circuit,
passes the trace context on and checks the reply for a service error, and gets its replies
on a lane of its connection (no per-request `wait_for`, no task hop per reply).
Within a run, raw and bus take turns by slices of SLICE requests (load from elsewhere on the
machine then hits both alike); the figure is the median of the runs' own ratios.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from rich.console import Console
from rich.table import Table

from bus import Bus, EmbeddedServer
from services.runtime.lifecycle import run, until_signalled

from .summary import Verdict, at_least

SUBJECT = "benchrpc.echo"
REQUESTS = 4000  # per run, case and side
SLICE = 200  # requests in a row of one side
CALLERS = 16  # callers at once in the concurrent case
TARGET = 0.95
CASES = ("sequential", f"{CALLERS} concurrent callers")


class Ping(msgspec.Struct):
    n: int
    note: str = "a benchmark request"


class Pong(msgspec.Struct):
    n: int
    note: str


async def _echo(ping: Ping) -> Pong:
    return Pong(ping.n, ping.note)


async def _respond(url: str) -> None:
    """The child: one responder until SIGTERM."""
    async with until_signalled() as stop, Bus(url, name="bench-responder") as bus:
        await bus.serve(SUBJECT, _echo, service="bench-rpc", concurrency=CALLERS)
        print("ready", flush=True)
        await stop.wait()


def _callers(total: int, callers: int, one: Callable[[int], Awaitable[Any]]) -> Any:
    """`total` requests made by `callers` tasks, each awaiting its replies one by one."""

    async def caller(first: int) -> None:
        for i in range(first, total, callers):
            await one(i)

    async def work() -> None:
        await asyncio.gather(*(caller(c) for c in range(callers)))

    return work


async def _one_run(
    run_no: int, nc: Any, bus: Bus, results: dict[str, dict[str, list[float]]]
) -> None:
    encode, decode = msgspec.json.Encoder().encode, msgspec.json.Decoder(Pong).decode

    async def raw(i: int) -> None:
        decode((await nc.request(SUBJECT, encode(Ping(i)), timeout=5)).data)

    async def ours(i: int) -> None:
        await bus.request(SUBJECT, Ping(i), Pong)

    for case, callers in zip(CASES, (1, CALLERS), strict=True):
        pair = [("raw", _callers(SLICE, callers, raw)), ("bus", _callers(SLICE, callers, ours))]
        spent = {"raw": 0.0, "bus": 0.0}
        gc.collect()  # the garbage of what ran before is not this case's to collect
        for n in range(REQUESTS // SLICE):  # fine slices, alternating: noise hits both alike
            for side, work in pair if (run_no + n) % 2 == 0 else reversed(pair):
                start = time.perf_counter()
                await work()
                spent[side] += time.perf_counter() - start
        for side, seconds in spent.items():
            results[case][side].append(REQUESTS // SLICE * SLICE / seconds)


def _responder(url: str) -> subprocess.Popen[str]:
    """The responder's child process, once it serves."""
    child = subprocess.Popen(
        [sys.executable, "-m", "services.bench.rpc", "respond", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError("the benchmark's responder did not start")
    return child


async def run_rpc_bench(runs: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    results: dict[str, dict[str, list[float]]] = {c: {"raw": [], "bus": []} for c in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(store_dir=Path(tmp)).start()
        child = _responder(server.url)
        try:
            nc = await nats.connect(server.url)
            async with Bus(server.url, name="bench-caller") as bus:
                await _one_run(0, nc, bus, {c: {"raw": [], "bus": []} for c in CASES})  # warm-up
                for run_no in range(runs):
                    console.print(f"request/reply run {run_no + 1}/{runs}…")
                    await _one_run(run_no, nc, bus, results)
                assert bus.circuits.snapshot() == {}  # nothing failed: the breaker stayed shut
            await nc.close()
        finally:
            child.terminate()
            child.wait(10)
            server.stop()
    return _report(results, runs, as_json)


def _stats(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _report(results: dict[str, dict[str, list[float]]], runs: int, as_json: bool) -> list[Verdict]:
    rows = {
        case: {side: _stats(rates) for side, rates in sides.items()}
        for case, sides in results.items()
    }
    # The median of each run's own ratio: its two sides shared that run's load.
    paired = {
        case: [b / r for b, r in zip(sides["bus"], sides["raw"], strict=True)]
        for case, sides in results.items()
    }
    ratios = {case: statistics.median(found) for case, found in paired.items()}
    verdicts = [
        at_least("patterns", f"request/reply, {case} vs raw", ratios[case], TARGET, "x")
        for case in CASES
    ]
    if as_json:
        out = {"rpc": rows, "ratios": ratios, "paired": paired, "runs": runs, "requests": REQUESTS}
        print(json.dumps(out))
        return verdicts
    table = Table(
        "request/reply", "bus (breaker on)", "raw nats-py", "ratio", "ratios", "target",
        title=f"request/reply, requests/s (medians of {runs}, min-max; ratio: of the runs')",
    )  # fmt: skip
    for case, row in rows.items():
        spread = f"{min(paired[case]):.2f}-{max(paired[case]):.2f}"
        table.add_row(
            case, _shown(row["bus"]), _shown(row["raw"]), f"{ratios[case]:.2f}x", spread,
            f">= {TARGET}x",
        )  # fmt: skip
    Console().print(table)
    return verdicts


def _shown(stats: dict[str, float]) -> str:
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})"


async def _main(runs: int, as_json: bool) -> None:
    from .summary import show

    show(await run_rpc_bench(runs, as_json), as_json)


if __name__ == "__main__":
    if sys.argv[1:2] == ["respond"]:
        run(_respond(sys.argv[2]))
    else:  # [runs] [--json]
        numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
        run(_main(numbers[0] if numbers else 5, "--json" in sys.argv))
