"""`bus soak`: demo traffic for a long run with periodic server restarts, watched over time.

Not for CI. It starts an embedded server (`sync_interval: always`) in a temporary directory
and `bus worker`, `bus projector` and `bus edge` on the demo app as subprocesses, creates
tasks through the edge at a steady rate (a few ask to fail, some often enough to be
dead-lettered), and restarts the server every `restart_every` seconds, by kill -9 and by
SIGTERM in turn. Every `report_every` seconds it prints each process's RSS and open file
descriptors, the worker's consumer lag, the projections' lag, dead letters, and the tasks
published / acknowledged / refused and the events stored.

At the end it stops the traffic, lets the system drain, and checks that every acknowledged
event is in the stream; every task was handled (completed, or dead-lettered when its
`fail_times` asked for it); each completed task has one `completed` event (a handler run
again after a restart stores nothing twice); `task_counts` counted each stored event once;
the services exit 0 on SIGTERM; and no service's memory or open files trend upwards after
the warm-up (figures.growth: a short run tells only a fast leak, a long one more).

Linux only: the figures come from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
from rich.console import Console

from bus import Bus, ConnectError, EmbeddedServer, ProjectionView
from bus._server import free_port
from services.demo import MAX_DELIVER, STATUS_OF, app
from services.runtime.lifecycle import until_signalled

from .figures import (
    PROBE_TIMEOUT,
    STREAM,
    WORKER,
    Sample,
    Verdict,
    consumer_lag,
    growth,
    messages_in,
    probe,
    projection_lag,
    render_sample,
)
from .supervised import Service, open_fds, rss_mb
from .traffic import IN_FLIGHT, Driver

SERVICES = ("worker", "projector", "edge")
DOWN_FOR = 1.0  # seconds the server stays down at each restart
READY_TIMEOUT = 30.0  # seconds for the edge to answer /readyz at the start
DRAIN_TIMEOUT = 120.0  # seconds the end waits for the worker and projections to catch up
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m`, `1.5h` or `250ms`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 90s, 10m or 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Soak:
    def __init__(
        self,
        server: EmbeddedServer,
        monitor: Bus,
        driver: Driver,
        restart_every: float,
        report_every: float,
    ) -> None:
        self.server, self.monitor, self.driver = server, monitor, driver
        self.restart_every, self.report_every = restart_every, report_every
        self.services: dict[str, Service] = {}
        self.restarts: list[str] = []
        self.samples: list[Sample] = []
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    async def restart_loop(self, stop: asyncio.Event) -> None:
        if self.restart_every <= 0:
            return
        for n in itertools.count(1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.restart_every)
            if stop.is_set():
                return
            kill = n % 2 == 1
            await asyncio.to_thread(self.server.kill if kill else self.server.stop)
            at = self.elapsed()
            await asyncio.sleep(DOWN_FOR)
            await asyncio.to_thread(self.server.start)
            self.restarts.append(f"{at:g}s {'kill -9' if kill else 'SIGTERM'}")

    async def report_loop(self, stop: asyncio.Event, out: Callable[[Sample], None]) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.report_every)
            sample = await self.sample()
            self.samples.append(sample)
            out(sample)

    async def sample(self) -> Sample:
        pids = {name: service.pid for name, service in self.services.items()}
        if self.server.pid is not None:
            pids["nats-server"] = self.server.pid
        lag = await probe(consumer_lag(self.monitor))
        return Sample(
            t=self.elapsed(),
            restarts=len(self.restarts),
            published=self.driver.published,
            acknowledged=len(self.driver.acked),
            refused=sum(self.driver.refused.values()),
            stored=await probe(messages_in(self.monitor, STREAM)),
            consumer_pending=lag[0] if lag else None,
            consumer_ack_pending=lag[1] if lag else None,
            projection_lag=await probe(projection_lag(self.monitor)),
            dead_letters=await probe(messages_in(self.monitor, f"DLQ_{STREAM}")),
            rss_mb={n: v for n, pid in pids.items() if (v := rss_mb(pid)) is not None},
            fds={n: v for n, pid in pids.items() if (v := open_fds(pid)) is not None},
        )

    async def drain(self) -> float | None:
        """Seconds until the worker owes nothing and the projections are caught up."""
        started = time.monotonic()
        while time.monotonic() - started < DRAIN_TIMEOUT:
            lag = await probe(consumer_lag(self.monitor))
            projections = await probe(projection_lag(self.monitor))
            if lag == (0, 0) and projections is not None and not any(projections.values()):
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.5)
        return None

    async def verdict(self, seconds: float) -> Verdict:
        problems: list[str] = []
        drained_in = await self.drain()
        if drained_in is None:
            problems.append(f"not drained within {DRAIN_TIMEOUT:g} s")

        # The stream: every event by name, the created events' ids, the completed tasks.
        stored: Counter[str] = Counter()
        created_ids: set[str] = set()
        completed: set[str] = set()
        next_seq = 1
        while page := await self.monitor.read(STREAM, next_seq, limit=1000):
            for m in page:
                name = m.subject.rsplit(".", 1)[-1]
                stored[name] += 1
                if name == "created":
                    created_ids.add(m.headers.get("Nats-Msg-Id", ""))
                elif name == "completed":
                    completed.add(m.subject.split(".")[1])
            next_seq = page[-1].seq + 1
        dead: set[str] = set()
        next_seq = 1
        while letters := await self.monitor.dead_letters(STREAM, next_seq, 1000):
            dead |= {d.original_subject.split(".")[1] for d in letters if d.consumer == WORKER}
            next_seq = letters[-1].seq + 1

        acked = self.driver.acked
        found = sum(1 for event_id in acked.values() if event_id in created_ids)
        if found < len(acked):
            problems.append(f"{len(acked) - found} acknowledged events are not in the stream")
        should_die = {t for t in acked if self.driver.fail_times[t] >= MAX_DELIVER}
        unhandled = [t for t in acked if t not in completed and t not in dead]
        if unhandled:
            problems.append(f"{len(unhandled)} tasks neither completed nor dead-lettered")
        if early := {t for t in acked if t in dead} - should_die:
            problems.append(f"{len(early)} tasks dead-lettered though they were to complete")
        if late := should_die - dead:
            problems.append(f"{len(late)} tasks asked to fail for good were not dead-lettered")
        if stored["completed"] != len(completed):
            problems.append(
                f"{stored['completed']} completed events stored for {len(completed)} completed "
                "tasks: a handler's events were stored twice"
            )

        counts: dict[str, int] = {}
        view = ProjectionView(self.monitor, app.projection("task_counts"))
        for event_name, status in STATUS_OF.items():
            found_count = await view.get(status)
            counts[status] = found_count[0].count if found_count else 0
            if counts[status] != stored[event_name]:
                problems.append(
                    f"task_counts[{status}] is {counts[status]}, the stream holds "
                    f"{stored[event_name]} {event_name} events"
                )

        exits = {name: await service.terminate() for name, service in self.services.items()}
        problems += [f"bus {n}: {e}" for n, e in exits.items() if not e.startswith("exit 0")]
        grown = {name: growth(self.samples, name) for name in self.services}
        problems += [f"bus {n} kept growing: {text}" for n, (text, grew) in grown.items() if grew]

        return Verdict(
            ok=not problems,
            problems=problems,
            seconds=seconds,
            restarts=self.restarts,
            published=self.driver.published,
            acknowledged=len(acked),
            refused=dict(self.driver.refused),
            found=found,
            lost=len(acked) - found,
            stored_events=dict(stored),
            tasks_completed=len(completed & acked.keys()),
            tasks_dead_lettered=len(dead & acked.keys()),
            dead_letters_expected=len(should_die),
            unhandled=len(unhandled),
            task_counts=counts,
            drained_in=drained_in,
            exits=exits,
            growth={name: text for name, (text, _) in grown.items()},
            errors_logged={n: s.errors_logged() for n, s in self.services.items()},
        )


async def wait_ready(client: httpx.AsyncClient, edge: Service) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if edge.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    log = edge.log.read_text(errors="replace").strip().splitlines()[-5:]
    raise ConnectError(f"bus edge did not get ready: {' | '.join(log) or 'no output'}")


async def run_soak(
    duration: float,
    restart_every: float,
    report_every: float,
    rate: float,
    as_json: bool,
) -> Verdict:
    """Run the soak; prints a line (or a JSON object) per sample, returns the verdict."""
    if not sys.platform.startswith("linux"):
        raise ValueError("bus soak reads /proc: Linux only")
    console = Console(highlight=False, soft_wrap=True)
    # Our own monitoring connection warns at each restart; the figures say it better.
    logging.getLogger("bus").setLevel(logging.ERROR)
    out = (lambda s: print(msgspec.json.encode(s).decode(), flush=True)) if as_json else None
    with tempfile.TemporaryDirectory(prefix="bus-soak-") as tmp:
        server = EmbeddedServer(store_dir=Path(tmp) / "nats").start()
        services: dict[str, Service] = {}
        try:
            key = f"soak-{secrets.token_hex(8)}"
            port = free_port()
            env = {k: v for k, v in os.environ.items() if k != "BUS_METRICS_PORT"}
            env |= {
                "BUS_NATS_URL": server.url,
                "BUS_EDGE_HOST": "127.0.0.1",
                "BUS_EDGE_PORT": str(port),
                "BUS_API_KEYS": f"{key}:read+write",
                "BUS_PUBLISH_RATE": "0",
            }
            async with (
                Bus(
                    server.url,
                    name="bus-soak",
                    registry=app.registry,
                    streams=app.streams,  # declared before the edge checks they exist
                    publish_timeout=PROBE_TIMEOUT,
                    drain_timeout=2.0,
                ) as monitor,
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {key}"},
                    limits=httpx.Limits(max_connections=IN_FLIGHT),
                    timeout=10,
                ) as client,
            ):
                for verb in SERVICES:
                    services[verb] = Service(verb, env, Path(tmp) / f"{verb}.log")
                await wait_ready(client, services["edge"])
                driver = Driver(client, rate)
                soak = Soak(server, monitor, driver, restart_every, report_every)
                soak.services = services
                if out is None:
                    console.print(
                        f"bus soak: {duration:g} s at {rate:g} tasks/s, server restarts every "
                        f"{restart_every:g} s; figures every {report_every:g} s (Ctrl-C ends early)"
                    )
                    out = lambda s: console.print(render_sample(s))  # noqa: E731
                stop = asyncio.Event()
                async with until_signalled() as interrupted:

                    async def timer() -> None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(interrupted.wait(), duration)
                        stop.set()

                    await asyncio.gather(
                        timer(),
                        driver.run(stop),
                        soak.restart_loop(stop),
                        soak.report_loop(stop, out),
                    )
                seconds = soak.elapsed()
                return await soak.verdict(seconds)
        finally:
            for service in services.values():
                service.kill()
            server.stop()
