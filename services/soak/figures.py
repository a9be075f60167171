"""What `bus soak` measures while it runs and how it shows it: samples, the verdict, growth.

Growth is judged as a trend, not from two moments: the Theil-Sen slope (the median of the
slopes between every pair of samples) of each service's RSS and open files after the
warm-up, with its confidence bounds. A service leaks when, even at the lower bound, it grows
by more than a tenth of its level in an hour (or, in a shorter run, within the run after its
warm-up), and the samples follow a line better than one jump between two flat levels:
restart spikes do not move the bound, a one-off step is a jump, while a steady climb or a
staircase (something kept at every restart) is a line. A short run cannot tell a leak from
a bounded cache still filling (the projector keeps up to 50,000 records), so it only calls
growth a leak once it is material: a tenth of the service's size within the run.

The figures come from NATS (stream, consumer and projection positions) and, in the driver,
from /proc; a probe gives None rather than an error while the server is restarting.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import msgspec
from rich.table import Table

from bus import Bus, BusError, ProjectionView
from services.demo import app

T = TypeVar("T")
WORKER = "tasks-worker"  # the demo worker's durable consumer
STREAM = "TASKS"
PROBE_TIMEOUT = 2.0  # per monitoring request (the server may be restarting)
# Growth: a leak is a trend over the run that its confidence bounds leave no doubt about.
WARM_UP = 0.25  # of the run, left out: caches and pools filling up
MIN_SAMPLES = 8  # after the warm-up; fewer tell nothing
CONFIDENCE, Z = 0.99, 2.576  # two-sided bounds of the slope, and the normal quantile for them
LEAK_SHARE = 0.10  # of the level, grown in an hour (or within a shorter run): a leak
RSS_FLOOR, FDS_FLOOR = 5.0, 5.0  # MB, open files: less is never called a leak


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


async def probe(work: Coroutine[Any, Any, T | None]) -> T | None:
    """The figure, or None when the server does not answer in time (a restart)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT * 2):
            return await work
    except (BusError, OSError, TimeoutError):
        return None


async def messages_in(bus: Bus, stream: str) -> int:
    return (await bus.streams.info(stream)).messages


async def projection_lag(bus: Bus) -> dict[str, int]:
    """Events each projection has still to see (positions read first: the stream moves on)."""
    positions = {
        name: (await ProjectionView(bus, projection).status()).position
        for name, projection in app.projections.items()
    }
    last = (await bus.streams.info(STREAM)).last_seq
    return {name: last - position for name, position in positions.items()}


async def consumer_lag(bus: Bus) -> tuple[int, int] | None:
    """(pending, ack pending) of the worker's consumer; None when the server does not answer."""
    try:
        consumer = await bus.streams.consumer(STREAM, WORKER)
    except BusError:
        return None
    return consumer.pending, consumer.ack_pending


class Trend(msgspec.Struct, frozen=True):
    """A figure's level and its Theil-Sen slope per hour with the slope's confidence bounds;
    `step` when one jump between two flat levels fits the samples better than the line."""

    level: float
    per_hour: float
    low: float
    high: float
    step: bool
    samples: int
    hours: float  # from the first sample judged to the last


def theil_sen(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(slope, low, high): the median of the pairwise slopes and its confidence bounds at
    CONFIDENCE (Sen 1968: the ranks Kendall's statistic allows either side of the median).

    A spike moves few of the ranks and a one-off step only those of the pairs across it, so
    neither pulls the lower bound up much; a trend moves all of them."""
    slopes = sorted(
        (v2 - v1) / (t2 - t1)
        for i, (t1, v1) in enumerate(points)
        for t2, v2 in points[i + 1 :]
        if t2 > t1
    )
    n, count = len(points), len(slopes)
    if not count:
        return 0.0, 0.0, 0.0
    spread = Z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    low = max(0, math.floor((count - spread) / 2) - 1)
    high = min(count - 1, math.ceil((count + spread) / 2))
    return statistics.median(slopes), slopes[low], slopes[high]


def trend(samples: list[Sample], figure: Callable[[Sample], float | None]) -> Trend | None:
    """The figure's trend after the warm-up (the first WARM_UP of the run), leaving out the
    sample right after each server restart (reconnecting clients are a spike, not a trend).
    None when too few samples are left to tell."""
    if not samples:
        return None
    start = samples[-1].t * WARM_UP
    points: list[tuple[float, float]] = []
    for before, sample in zip([None, *samples], samples, strict=False):
        value = figure(sample)
        restarted = before is not None and before.restarts != sample.restarts
        if value is not None and sample.t >= start and not restarted:
            points.append((sample.t, value))
    if len(points) < MIN_SAMPLES:
        return None
    slope, low, high = theil_sen(points)
    level = statistics.median(v for _, v in points)
    step = _step_error(points) < _line_error(points, slope)
    hours = (points[-1][0] - points[0][0]) / 3600
    return Trend(level, slope * 3600, low * 3600, high * 3600, step, len(points), hours)


def _line_error(points: list[tuple[float, float]], slope: float) -> float:
    """How far the samples are from the line of `slope` through their median (L1)."""
    base = statistics.median(v - slope * t for t, v in points)
    return sum(abs(v - base - slope * t) for t, v in points)


def _step_error(points: list[tuple[float, float]]) -> float:
    """How far the samples are from the best fit of two flat levels, one jump (L1)."""

    def flat(values: list[float]) -> float:
        middle = statistics.median(values)
        return sum(abs(v - middle) for v in values)

    values = [v for _, v in points]
    return min(flat(values[:k]) + flat(values[k:]) for k in range(1, len(values)))


def leaking(found: Trend, floor: float) -> bool:
    """Growing, beyond doubt (the lower confidence bound), by more than LEAK_SHARE of its
    level (and `floor`) in an hour, or within the judged samples if they span less; and
    growing all along: a line fits better than one jump between two flat levels."""
    grown = found.low * min(found.hours, 1.0)
    return grown > max(floor, LEAK_SHARE * found.level) and not found.step


def growth(samples: list[Sample], name: str) -> tuple[str, bool]:
    """How service `name`'s RSS and open files trended over the run, and whether either
    leaks. A short run only tells a fast leak: its bounds are wide."""
    parts, leaks = [], False
    for label, unit, floor, figure in (
        ("rss", " MB", RSS_FLOOR, lambda s: s.rss_mb.get(name)),
        ("fds", "", FDS_FLOOR, lambda s: s.fds.get(name)),
    ):
        found = trend(samples, figure)
        if found is None:
            return f"{len(samples)} samples: too few to tell", False
        leaks = leaks or leaking(found, floor)
        shape = ", one step" if found.step and found.low > 0 else ""
        parts.append(
            f"{label} {found.level:.0f}{unit}, {found.per_hour:+.1f}{unit}/h "
            f"({CONFIDENCE:.0%}: {found.low:+.1f} to {found.high:+.1f}{shape})"
        )
    return "; ".join(parts), leaks


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
