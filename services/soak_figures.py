"""What `bus soak` measures while it runs and how it shows it: samples, the verdict, growth.

The figures come from NATS (stream, consumer and projection positions) and, in the driver,
from /proc; a probe gives None rather than an error while the server is restarting.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec
import nats.errors
from rich.table import Table

from bus import Bus, BusError
from bus.projection import ProjectionView
from services.demo import app

T = TypeVar("T")
WORKER = "tasks-worker"  # the demo worker's durable consumer
STREAM = "TASKS"
PROBE_TIMEOUT = 2.0  # per monitoring request (the server may be restarting)
# Growth heuristic: the last quarter of the samples against the second quarter (the mean of
# RSS, the median of open files: a restart's waiting requests are a spike, not a trend).
GROWTH_RATIO, GROWTH_MB, GROWTH_FDS, MIN_SAMPLES = 1.25, 20.0, 8, 8


class Sample(msgspec.Struct):
    """The figures at one moment; None where the server did not answer in time."""

    t: float
    restarts: int
    published: int
    acknowledged: int
    refused: int
    stored: int | None
    consumer_pending: int | None
    consumer_ack_pending: int | None
    projection_lag: dict[str, int] | None
    dead_letters: int | None
    rss_mb: dict[str, float]
    fds: dict[str, int]


class Verdict(msgspec.Struct):
    ok: bool
    problems: list[str]
    seconds: float
    restarts: list[str]
    published: int
    acknowledged: int
    refused: dict[str, int]
    found: int
    lost: int
    stored_events: dict[str, int]
    tasks_completed: int
    tasks_dead_lettered: int
    dead_letters_expected: int
    unhandled: int
    task_counts: dict[str, int]
    drained_in: float | None
    exits: dict[str, str]
    growth: dict[str, str]
    errors_logged: dict[str, int]


async def probe(work: Coroutine[Any, Any, T]) -> T | None:
    """The figure, or None when the server does not answer in time (a restart)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT * 2):
            return await work
    except (BusError, nats.errors.Error, OSError, TimeoutError):
        return None


async def messages_in(bus: Bus, stream: str) -> int:
    return (await bus.streams.info(stream)).messages


async def projection_lag(bus: Bus) -> dict[str, int]:
    last = (await bus.streams.info(STREAM)).last_seq
    lag = {}
    for name, projection in app.projections.items():
        lag[name] = last - (await ProjectionView(bus, projection).status()).position
    return lag


async def consumer_lag(bus: Bus) -> tuple[int, int]:
    info = await bus.js.consumer_info(STREAM, WORKER)
    return info.num_pending or 0, info.num_ack_pending or 0


def growth(samples: list[Sample], name: str) -> tuple[str, bool]:
    """ "rss a→b MB, fds c→d" from the second quarter to the last, and whether it grew."""
    rss = [s.rss_mb[name] for s in samples if name in s.rss_mb]
    fds = [s.fds[name] for s in samples if name in s.fds]
    if min(len(rss), len(fds)) < MIN_SAMPLES:
        return f"{len(rss)} samples: too few to tell", False
    q = len(rss) // 4
    early, late = statistics.mean(rss[q : 2 * q]), statistics.mean(rss[-q:])
    fd_early, fd_late = statistics.median(fds[q : 2 * q]), statistics.median(fds[-q:])
    grew_rss = late > early * GROWTH_RATIO and late - early > GROWTH_MB
    grew_fds = fd_late > fd_early + GROWTH_FDS
    text = f"rss {early:.0f}→{late:.0f} MB, fds {fd_early:g}→{fd_late:g}"
    return text, grew_rss or grew_fds


def render_sample(s: Sample) -> str:
    def show(value: object) -> str:
        return "-" if value is None else str(value)

    lag = "-" if s.projection_lag is None else str(max(s.projection_lag.values(), default=0))
    rss = " ".join(f"{n} {v:.0f}" for n, v in s.rss_mb.items())
    fds = " ".join(f"{n} {v}" for n, v in s.fds.items())
    return (
        f"{s.t:>7.0f}s  restarts {s.restarts}  tasks {s.published} sent, {s.acknowledged} "
        f"acked, {s.refused} refused  stored {show(s.stored)}  worker lag "
        f"{show(s.consumer_pending)}+{show(s.consumer_ack_pending)}  projection lag {lag}  "
        f"dead letters {show(s.dead_letters)}  RSS MB: {rss}  FDs: {fds}"
    )


def render(v: Verdict) -> Table:
    table = Table(
        show_header=False, title=f"bus soak · {v.seconds:g} s · {'OK' if v.ok else 'FAILED'}"
    )
    table.add_row("server restarts", ", ".join(v.restarts) or "none")
    table.add_row("tasks sent", str(v.published))
    table.add_row("acknowledged (201)", str(v.acknowledged))
    table.add_row("refused", ", ".join(f"{k} {n}" for k, n in v.refused.items()) or "0")
    table.add_row("acknowledged found in the stream", f"{v.found} (lost {v.lost})")
    table.add_row("events stored", ", ".join(f"{k} {n}" for k, n in v.stored_events.items()))
    table.add_row("tasks completed", str(v.tasks_completed))
    table.add_row(
        "tasks dead-lettered", f"{v.tasks_dead_lettered} (expected {v.dead_letters_expected})"
    )
    table.add_row("tasks unhandled", str(v.unhandled))
    table.add_row("task_counts", ", ".join(f"{k} {n}" for k, n in v.task_counts.items()))
    table.add_row("drained in", "-" if v.drained_in is None else f"{v.drained_in:g} s")
    for name, text in v.exits.items():
        table.add_row(f"bus {name} on SIGTERM", text)
    for name, text in v.growth.items():
        table.add_row(f"bus {name}", text)
    table.add_row("error lines logged", ", ".join(f"{k} {n}" for k, n in v.errors_logged.items()))
    for problem in v.problems:
        table.add_row("[bold red]problem[/]", problem)
    return table
