"""`bus demo traffic`: steady load on the demo domain through the HTTP edge.

It goes through HTTP, not NATS, so every layer (edge, worker, projector) shows up in the
metrics and traces. It creates tasks (a few ask to fail, some often enough to dead-letter),
reads each back with read-your-writes (`after_seq`) and now and then reads a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
import uuid
from collections import deque
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bus import ConfigError, ConnectError
from services.runtime.lifecycle import until_signalled
from services.runtime.settings import Settings

IN_FLIGHT = 100  # requests at once at most; past it the rate drops instead of piling up
FAIL_TIMES = (0, 1, 2, 9)  # 9 >= the worker's max_deliver: a dead letter
FAIL_WEIGHTS = (90, 5, 4, 1)


class Summary(msgspec.Struct):
    url: str
    seconds: float
    sent: int = 0
    errors: int = 0
    created: int = 0
    reads: int = 0
    latency_ms: dict[str, float] = {}
    last_error: str = ""


def edge_target(url: str | None, key: str | None) -> tuple[str, str]:
    """The edge and key to use: given, else what a running `bus up` and BUS_* say."""
    settings = Settings.from_env()
    if key is None:
        key = _write_key(settings.edge_options()["api_keys"])
    if url is None:
        url = _recorded_edge(settings) or f"http://{settings.edge_host}:{settings.edge_port}"
    return url.rstrip("/"), key


def _write_key(spec: str | None) -> str:
    from services.edge.auth import parse_keys

    keys = parse_keys(spec or "")
    key = next((k for k, who in keys.items() if who.scopes & {"write", "admin"}), None)
    if key is None:
        raise ConfigError(
            "no API key that may write: pass --key (the dev API key `bus up` printed) "
            "or set BUS_API_KEYS"
        )
    return key


def _recorded_edge(settings: Settings) -> str | None:
    """The edge of the `bus up` still running for this data dir, if any."""
    try:
        state = json.loads(settings.state_file.read_text())
        os.kill(int(state["pid"]), 0)
        return str(state["edge_url"])
    except (OSError, ValueError, KeyError):
        return None


class Traffic:
    def __init__(self, client: Any, url: str, rate: float, duration: float) -> None:
        self.client, self.rate, self.duration = client, rate, duration
        self.summary = Summary(url=url, seconds=0.0)
        self.latencies: list[float] = []
        self.to_read: deque[tuple[str, int]] = deque()  # (task id, seq) just created

    async def check(self) -> None:
        """Fail before the run, in one line, when the edge is down or refuses the key."""
        import httpx

        url = self.summary.url
        try:
            response = await self.client.get("/api/v1/projections")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ConnectError(
                f"cannot reach the edge at {url} ({exc or type(exc).__name__}): "
                "start `bus up` or pass --url"
            ) from None
        if response.status_code in (401, 403):
            raise ConfigError(f"the edge at {url} refused the key: {_detail(response)}")
        if response.status_code != 200:
            raise ConnectError(
                f"{url} answered {response.status_code} to GET /api/v1/projections: "
                "is it a bus edge?"
            )

    async def run(self, progress: Progress) -> Summary:
        bar = progress.add_task("traffic", total=self.duration, stats="")
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(IN_FLIGHT)
        started = loop.time()
        async with until_signalled() as stop, asyncio.TaskGroup() as group:
            n = 0
            while (elapsed := loop.time() - started) < self.duration and not stop.is_set():
                await slots.acquire()
                group.create_task(self._one(n, slots))
                n += 1
                progress.update(bar, completed=elapsed, stats=self._stats())
                with contextlib.suppress(TimeoutError):
                    delay = started + n / self.rate - loop.time()
                    await asyncio.wait_for(stop.wait(), max(0.0, delay))
        self.summary.seconds = round(loop.time() - started, 3)
        progress.update(bar, completed=self.duration, stats=self._stats())
        self.summary.latency_ms = _percentiles(self.latencies)
        return self.summary

    def _stats(self) -> str:
        recent = self.latencies[-200:]
        p50 = f"{statistics.median(recent):.1f} ms" if recent else "-"
        return f"sent {self.summary.sent} · errors {self.summary.errors} · p50 {p50}"

    async def _one(self, n: int, slots: asyncio.Semaphore) -> None:
        try:
            if n % 10 == 9:  # 404 until a first task has completed
                await self._call("GET", "/api/v1/projections/task_counts/completed", ok=(404,))
                self.summary.reads += 1
            elif self.to_read:
                task, seq = self.to_read.popleft()
                await self._call("GET", f"/api/v1/projections/task/{task}?after_seq={seq}")
                self.summary.reads += 1
            else:
                task = f"demo-{uuid.uuid4().hex[:12]}"
                fail_times = random.choices(FAIL_TIMES, FAIL_WEIGHTS)[0]
                body = {"title": f"demo task {n}", "fail_times": fail_times}
                answer = await self._call("POST", f"/api/v1/events/tasks.{task}.created", body)
                if answer is not None:
                    self.summary.created += 1
                    self.to_read.append((task, answer["seq"]))
        finally:
            slots.release()

    async def _call(
        self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()
    ) -> Any:
        """One request, timed and counted; an error is counted and remembered, not raised."""
        import httpx

        self.summary.sent += 1
        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            self._error(f"{method} {path}: {exc or type(exc).__name__}")
            return None
        self.latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code in ok:
            return None
        if response.status_code >= 400:
            self._error(f"{method} {path}: {response.status_code} {_detail(response)}")
            return None
        try:
            return response.json()
        except ValueError:
            self._error(f"{method} {path}: the answer is not JSON")
            return None

    def _error(self, message: str) -> None:
        self.summary.errors += 1
        self.summary.last_error = message


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return str(response.text)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 2)}


async def drive(
    url: str | None, key: str | None, rate: float, duration: float, quiet: bool
) -> Summary:
    """Send `rate` requests a second for `duration` seconds (Ctrl-C ends early)."""
    try:
        import httpx
    except ImportError:
        raise ConfigError("bus demo traffic needs httpx: pip install httpx") from None
    base, key = edge_target(url, key)
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=10
    ) as client:
        traffic = Traffic(client, base, rate, duration)
        await traffic.check()
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
        )
        with Progress(*columns, console=Console(stderr=True), disable=quiet) as progress:
            return await traffic.run(progress)


def render(summary: Summary) -> Table:
    table = Table(show_header=False, title=f"demo traffic · {summary.url} · {summary.seconds:g}s")
    table.add_row("requests", str(summary.sent))
    table.add_row("tasks created", str(summary.created))
    table.add_row("projection reads", str(summary.reads))
    table.add_row("errors", str(summary.errors))
    for name, value in summary.latency_ms.items():
        table.add_row(f"latency {name}", f"{value} ms")
    if summary.last_error:
        table.add_row("last error", summary.last_error)
    return table
