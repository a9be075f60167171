"""The edge's health monitor: every `interval` seconds it checks each registered instance
(its heartbeat, then a GET of its health URL), keeps the verdicts for `/health` and the
`bus_component_up` gauge, and shares them in KV (`bus.HealthRecords`) for other edges,
`bus components` and `bus status`.

A health URL is whatever a component registered, so it is treated as hostile: http(s) only,
redirects reported rather than followed, the whole exchange bounded by `timeout`, at most
MAX_BODY bytes read (undecoded: no decompression bomb), `concurrency` checks at a time.
Several edges each run a monitor; a check is one GET, and the last verdict written wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, Literal, Self

import httpx
import msgspec

from bus import (
    Bus,
    BusError,
    ComponentHealth,
    HealthRecords,
    Heartbeat,
    components,
    heartbeats,
    silent_components,
)
from observability.metrics import Metrics

log = logging.getLogger("bus.edge.monitor")
INTERVAL = 5.0  # seconds between rounds of checks
TIMEOUT = 2.0  # seconds one check may take, connection to last byte
CONCURRENCY = 16  # checks in flight at once
MAX_BODY = 64 * 1024  # bytes of a health answer read
MAX_REASON = 200  # characters of a reason taken from an answer
MAX_NAMED = 5  # failing checks named in a reason
KEEP_FOR = 5  # rounds a verdict outlives its monitor in KV (and at least KEEP_AT_LEAST s)
KEEP_AT_LEAST = 30.0

Verdict = Literal["pass", "warn", "fail"]


class HealthMonitor:
    """Checks the registry's instances until closed; `latest` holds the last round."""

    def __init__(
        self,
        bus: Bus,
        metrics: Metrics,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        concurrency: int = CONCURRENCY,
        checked_by: str | None = None,  # default: this host and process
    ) -> None:
        self.bus, self.metrics = bus, metrics
        self.interval, self.timeout = interval, timeout
        self.checked_by = checked_by or f"{socket.gethostname()}-{os.getpid()}"
        self.records = HealthRecords(bus, ttl=max(KEEP_AT_LEAST, KEEP_FOR * interval))
        self.latest: list[ComponentHealth] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxies from the environment between us and the components
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
            headers={"Accept": "application/health+json, application/json"},
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="health monitor")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_all()
            except BusError as exc:  # NATS away: the next round tries again
                log.warning("health monitor: %s", exc)
            except Exception:  # a bug must not stop the monitoring for good
                log.exception("health monitor: a round failed")
            await asyncio.sleep(self.interval)

    async def check_all(self) -> list[ComponentHealth]:
        """One round: every registered instance checked, measured and shared."""
        found = await heartbeats(self.bus)
        verdicts = list(await asyncio.gather(*(self.check(h) for h in found)))
        _log_changes(self.latest, verdicts)
        self.latest = verdicts
        self._measure(verdicts)
        await self.records.put(verdicts)
        return verdicts

    def failing(self) -> list[ComponentHealth]:
        return [v for v in self.latest if v.status == "fail"]

    async def check(self, heartbeat: Heartbeat) -> ComponentHealth:
        c = heartbeat.component
        verdict = ComponentHealth(
            name=c.name,
            instance=c.instance,
            status="pass",
            checked_at="",
            heartbeat_at=c.heartbeat_at,
            heartbeat_age=heartbeat.age,
            health_url=c.health_url,
            checked_by=self.checked_by,
            interval=self.interval,
        )
        if heartbeat.missing:
            reason = f"no heartbeat for {heartbeat.age:.1f} s (one every {c.ttl / 3:g} s)"
            return _stamped(verdict, status="fail", reason=reason)
        if not c.health_url:
            return _stamped(verdict, reason="no health URL: heartbeat only")
        async with self._slots:
            try:
                status, reason, latency = await self._probe(c.health_url)
            except Exception:  # a bug here must not cost the other instances their checks
                log.exception("health monitor: checking %s", c.health_url)
                status, reason, latency = "fail", "the monitor could not check it", None
        return _stamped(verdict, status=status, reason=reason, latency_ms=latency)

    async def _probe(self, url: str) -> tuple[Verdict, str, float | None]:
        """(verdict, reason, milliseconds) of one GET of `url`."""
        if not url.lower().startswith(("http://", "https://")):
            return "fail", "the health URL is not http(s)", None
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as answer,
            ):
                body = await _read_some(answer.aiter_raw(), MAX_BODY)
        except TimeoutError:
            return "fail", f"no answer in {self.timeout:g} s", None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as exc:
            return "fail", _short(f"unreachable: {type(exc).__name__} {exc}"), None
        latency = round((time.perf_counter() - started) * 1000, 2)
        return *_judge(answer, body), latency

    def _measure(self, verdicts: Iterable[ComponentHealth]) -> None:
        up: dict[str, int] = {}
        for v in verdicts:
            up[v.name] = min(up.get(v.name, 1), int(v.status != "fail"))
            self.metrics.component_checks.labels(v.name, v.status).inc()
        self.metrics.component_up.clear()  # names no longer registered go
        for name, value in up.items():
            self.metrics.component_up.labels(name).set(value)


def _log_changes(before: list[ComponentHealth], now: list[ComponentHealth]) -> None:
    """One log line per instance whose verdict changed (a first check that passes is quiet)."""
    was = {v.key: v.status for v in before}
    for v in now:
        if was.get(v.key, "pass") != v.status:
            level = logging.INFO if v.status == "pass" else logging.WARNING
            log.log(
                level, "component %s instance %s: %s %s", v.name, v.instance, v.status, v.reason
            )


def _stamped(verdict: ComponentHealth, **changes: Any) -> ComponentHealth:
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return msgspec.structs.replace(verdict, checked_at=now, **changes)


async def _read_some(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Up to `limit` bytes of a body; the rest is left unread (the connection is closed)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def _short(text: str) -> str:
    printable = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return printable[:MAX_REASON]


def _judge(answer: httpx.Response, body: bytes) -> tuple[Verdict, str]:
    """2xx passes (or warns/fails as an application/health+json body says), 3xx warns (the
    redirect is not followed), anything else fails."""
    code = answer.status_code
    reported, problems = _reported(body)
    if 300 <= code < 400:
        where = _short(answer.headers.get("location", "?"))
        return "warn", f"HTTP {code}: redirects to {where} (not followed)"
    if not 200 <= code < 300:
        return "fail", _short(f"HTTP {code}" + (f": {problems}" if problems else ""))
    if reported in ("warn", "fail"):
        return reported, _short(f"reports {reported}" + (f": {problems}" if problems else ""))
    return "pass", ""


def _reported(body: bytes) -> tuple[Verdict | None, str]:
    """The status a health+json body reports, and its checks that do not pass."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested beyond reason
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    status, checks = data.get("status"), data.get("checks")
    names = [
        str(name)
        for name, entries in (checks.items() if isinstance(checks, dict) else [])
        if isinstance(entries, list)
        and any(isinstance(e, dict) and e.get("status") in ("warn", "fail") for e in entries)
    ]
    shown = ", ".join(names[:MAX_NAMED])
    shown += f" (+{len(names) - MAX_NAMED} more)" if len(names) > MAX_NAMED else ""
    return (status if status in ("pass", "warn", "fail") else None), shown


async def listing(bus: Bus) -> list[dict[str, Any]]:
    """Running components, then registered instances whose heartbeat stopped, each with the
    last verdict shared on it (`GET /api/v1/components`, `bus components`, MCP)."""
    running = await components(bus)
    silent = [s.component for s in await silent_components(bus) if s.component not in running]
    verdicts = await HealthRecords(bus).by_key()
    return [with_health(c, verdicts.get(c.key)) for c in [*running, *silent]]


def with_health(item: msgspec.Struct, verdict: ComponentHealth | None) -> dict[str, Any]:
    """`item` (a Component, a Silent one) as JSON plus `health`: the last verdict shared on
    it, null before its first check (and for `nats.micro` responders, which do not register)."""
    shown: dict[str, Any] = msgspec.to_builtins(item)
    return shown | {"health": verdict}


def worst(verdicts: Iterable[ComponentHealth | None]) -> str:
    """fail, warn or pass over the verdicts; "unknown" when none has been checked."""
    statuses = {v.status for v in verdicts if v is not None}
    return next((s for s in ("fail", "warn", "pass") if s in statuses), "unknown")
