"""The edge's health monitor: every registered instance checked (heartbeat, then its health
URL), the verdicts shared in KV and shown by the API, `bus components` and `bus status`, a
failure as a metric and a warning in the edge's /health; hostile health URLs neither hang
nor flood it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import httpx
import msgspec
import pytest
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bus import Bus, Component, ComponentHealth, ConfigError, HealthRecords, Registration
from observability.metrics import Metrics
from services.cli.status import collect, render
from services.demo import app
from services.edge import create_app
from services.edge.monitor import HealthMonitor, _judge, listing
from services.edge.server import start_edge, stop_edge
from services.runtime.settings import Settings
from tests.edge import KEYS, READ, serve
from tests.processes import BUS, running

INTERVAL = 0.2  # seconds between the test edge's rounds
TIMEOUT = 0.5  # seconds a check may take (the hostile round's own monitor)
EDGE_TIMEOUT = 5.0  # the test edge's: its components answer from this busy process, and a
# check of a healthy one that timed out on a loaded machine would log a change it never had
REPORTED_WITHIN = 15.0  # seconds a change may take to show (a deadline, not a timing)


async def until(check: Any, timeout: float = REPORTED_WITHIN) -> Any:
    """Poll the async `check()` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)


class Components:
    """A real HTTP server playing registered components' health URLs, good and hostile."""

    def __init__(self) -> None:
        self.release = asyncio.Event()  # lets the slow handler finish at teardown
        self.url = ""

    async def healthy(self, request: Request) -> Response:
        return JSONResponse({"status": "pass", "checks": {}}, media_type="application/health+json")

    async def degraded(self, request: Request) -> Response:
        body = {"status": "warn", "checks": {"projection:task:lag": [{"status": "warn"}]}}
        return JSONResponse(body, media_type="application/health+json")

    async def failing(self, request: Request) -> Response:
        checks = {"nats:connected": [{"status": "fail"}], "jetstream:responseTime": [{}]}
        body = {"status": "fail", "checks": checks}
        return JSONResponse(body, status_code=503, media_type="application/health+json")

    async def slow(self, request: Request) -> Response:
        await self.release.wait()
        return JSONResponse({"status": "pass"})

    async def endless(self, request: Request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            while not self.release.is_set():
                yield b'{"status": "fail", "pad": "' + b"x" * 65536
                await asyncio.sleep(0)

        return StreamingResponse(forever(), media_type="application/health+json")

    async def loop(self, request: Request) -> Response:
        return RedirectResponse("/loop", status_code=302)

    async def huge_headers(self, request: Request) -> Response:
        return Response("{}", headers={"x-padding": "y" * 1_000_000})

    def routes(self) -> list[Route]:
        names = ["healthy", "degraded", "failing", "slow", "endless", "loop", "huge_headers"]
        return [Route(f"/{name}", getattr(self, name)) for name in names]


@pytest.fixture
async def health_urls() -> AsyncIterator[Components]:
    playing = Components()
    server, task, port = await start_edge(Starlette(routes=playing.routes()), "127.0.0.1", 0)
    playing.url = f"http://127.0.0.1:{port}"
    try:
        yield playing
    finally:
        playing.release.set()
        await stop_edge(server, task)


@pytest.fixture
async def monitored(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The demo edge under uvicorn, checking the registry every INTERVAL seconds."""
    api = create_app(
        app, nats_url, api_keys=KEYS, health_interval=INTERVAL, health_timeout=EDGE_TIMEOUT
    )
    async for client in serve(api):
        yield client


async def verdict_of(edge: httpx.AsyncClient, name: str) -> dict[str, Any] | None:
    """The health of component `name`'s (single) instance, as the API shows it."""
    answer = await edge.get(f"/api/v1/components/{name}", headers=READ)
    if answer.status_code != 200:
        return None
    body = answer.json()
    [instance] = body["instances"] + body["silent"]
    health: dict[str, Any] | None = instance["health"]
    return health


def component(name: str, url: str) -> Component:
    return Component(name=name, health_url=url)


async def test_a_component_answering_503_fails_with_the_reason(
    monitored: httpx.AsyncClient,
    tasks: Bus,
    health_urls: Components,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Registration(tasks, component("sick", f"{health_urls.url}/failing")),
        Registration(tasks, component("fine", f"{health_urls.url}/healthy")),
        Registration(tasks, component("meh", f"{health_urls.url}/degraded")),
    ):

        async def fail() -> dict[str, Any] | None:
            found = await verdict_of(monitored, "sick")
            return found if found and found["status"] == "fail" else None

        sick = await until(fail)
        assert sick["reason"] == "HTTP 503: nats:connected"
        assert sick["health_url"] == f"{health_urls.url}/failing"
        assert sick["latency_ms"] >= 0
        assert sick["checked_at"]
        assert sick["heartbeat_at"]
        fine = await until(lambda: verdict_of(monitored, "fine"))
        assert (fine["status"], fine["reason"]) == ("pass", "")
        meh = await until(lambda: verdict_of(monitored, "meh"))
        assert (meh["status"], meh["reason"]) == ("warn", "reports warn: projection:task:lag")
        one = (await monitored.get("/api/v1/components/sick", headers=READ)).json()
        assert one["status"] == "fail"

        listed = (await monitored.get("/api/v1/components", headers=READ)).json()
        assert {c["name"]: c["health"]["status"] for c in listed} == {
            "fine": "pass",
            "meh": "warn",
            "sick": "fail",
        }

        # The edge itself is fine: its /health warns (200), naming the failing component.
        health = await monitored.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "warn"
        [check] = body["checks"]["component:sick"]
        assert check["status"] == "warn"
        assert "HTTP 503: nats:connected" in check["output"]
        assert "component:meh" not in body["checks"]  # a warning is not a failure

        metrics = (await monitored.get("/metrics")).text
        assert 'bus_component_up{component="sick"} 0.0' in metrics
        assert 'bus_component_up{component="fine"} 1.0' in metrics
        assert 'bus_component_up{component="meh"} 1.0' in metrics
        assert re.search(
            r'bus_component_health_checks_total\{component="sick",status="fail"\} [1-9]', metrics
        )

        call = {"name": "list_components", "arguments": {}}
        tool = (await monitored.post("/mcp/v2/tools/call", json=call, headers=READ)).json()
        listed_by_mcp = [json.loads(item["text"]) for item in tool["content"]]  # one each
        assert {c["name"]: c["health"]["status"] for c in listed_by_mcp}["sick"] == "fail"

        changes = [r.getMessage() for r in caplog.records if r.name == "bus.edge.monitor"]
        assert any(
            m.startswith("component sick instance ")
            and m.endswith(": fail HTTP 503: nats:connected")
            for m in changes
        ), changes
        assert not any("component fine " in m for m in changes)  # passing from the start

        # Shared: what another reader finds in KV is the same verdict.
        [shared] = await HealthRecords(tasks).read("sick")
        assert (shared.status, shared.reason) == ("fail", "HTTP 503: nats:connected")
        assert shared.interval == INTERVAL


async def test_a_component_that_stops_heartbeating_fails(
    monitored: httpx.AsyncClient, nats_url: str, health_urls: Components
) -> None:
    """Its NATS connection gone (no heartbeat, no deregistration): failing, though its
    health URL still answers."""
    async with Bus(nats_url) as doomed:
        cut_off = component("cut-off", f"{health_urls.url}/healthy")
        registration = await Registration(doomed, cut_off, ttl=1.0).start()
        assert (await until(lambda: verdict_of(monitored, "cut-off")))["status"] == "pass"
    # closed without a deregistration; its heartbeats fail from now on
    try:

        async def fail() -> dict[str, Any] | None:
            found = await verdict_of(monitored, "cut-off")
            return found if found and found["status"] == "fail" else None

        verdict = await until(fail)
        assert verdict["reason"].startswith("no heartbeat for ")
        assert verdict["heartbeat_age"] > 2 / 3
        body = (await monitored.get("/health")).json()
        assert body["status"] == "warn"
        assert "no heartbeat" in body["checks"]["component:cut-off"][0]["output"]
        metrics = (await monitored.get("/metrics")).text
        assert 'bus_component_up{component="cut-off"} 0.0' in metrics
    finally:
        await registration.stop()  # the heartbeat task (its deregistration cannot reach NATS)


async def test_hostile_health_urls_neither_hang_nor_flood_the_monitor(
    tasks: Bus, health_urls: Components
) -> None:
    """One round over components whose health URLs are slow, endless, redirect forever,
    send huge headers, refuse connections or are not http: each gets a verdict, and the
    round ends (within the test's deadline, whatever the hostile servers do)."""
    hostile = {
        "slow": f"{health_urls.url}/slow",
        "endless": f"{health_urls.url}/endless",
        "loop": f"{health_urls.url}/loop",
        "headers": f"{health_urls.url}/huge_headers",
        "refused": "http://127.0.0.1:1/health",
        "file": "file:///etc/passwd",
        "garbage": "http://[::1",
        "fine": f"{health_urls.url}/healthy",
    }
    monitor = HealthMonitor(tasks, Metrics(), interval=60, timeout=TIMEOUT, concurrency=4)
    async with contextlib.AsyncExitStack() as registered, monitor:
        for name, url in hostile.items():
            await registered.enter_async_context(Registration(tasks, component(name, url)))
        async with asyncio.timeout(REPORTED_WITHIN):
            verdicts = {v.name: v for v in await monitor.check_all()}
    assert verdicts["slow"].status == "fail"
    assert verdicts["slow"].reason == f"no answer in {TIMEOUT:g} s"
    # 200 with more than MAX_BODY bytes: read up to the bound only, judged by the status code
    assert verdicts["endless"].status == "pass"
    assert verdicts["loop"].status == "warn"
    assert verdicts["loop"].reason == "HTTP 302: redirects to /loop (not followed)"
    assert verdicts["headers"].status == "fail"
    assert verdicts["headers"].reason.startswith("unreachable: RemoteProtocolError")
    assert verdicts["refused"].status == "fail"
    assert verdicts["refused"].reason.startswith("unreachable: ConnectError")
    assert (verdicts["file"].status, verdicts["file"].reason) == (
        "fail",
        "the health URL is not http(s)",
    )
    assert verdicts["garbage"].status == "fail"
    assert verdicts["fine"].status == "pass"
    assert all(len(v.reason) <= 200 for v in verdicts.values())


async def test_another_edge_shows_the_shared_verdicts(
    monitored: httpx.AsyncClient, tasks: Bus, nats_url: str, health_urls: Components
) -> None:
    """An edge that does not monitor (interval 0) serves what the monitoring one found."""
    async with Registration(tasks, component("sick", f"{health_urls.url}/failing")):
        await until(lambda: verdict_of(monitored, "sick"))
        quiet = create_app(app, nats_url, api_keys=KEYS, health_interval=0)
        async for other in serve(quiet):
            found = await verdict_of(other, "sick")
            assert found is not None
            assert found["status"] == "fail"
            assert quiet.state.monitor is None


async def test_nothing_registered_makes_no_bucket(monitored: httpx.AsyncClient, tasks: Bus) -> None:
    assert (await monitored.get("/api/v1/components", headers=READ)).json() == []
    assert await HealthRecords(tasks).read() == []
    names = {s.name for s in await tasks.streams.list()}
    assert "KV_bus_component_health" not in names
    assert (await monitored.get("/health")).json()["status"] == "pass"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUS_HEALTH_INTERVAL", "-1"),
        ("BUS_HEALTH_INTERVAL", "soon"),
        ("BUS_HEALTH_INTERVAL", "inf"),
        ("BUS_HEALTH_INTERVAL", "1e9"),
        ("BUS_HEALTH_TIMEOUT", "0"),
        ("BUS_HEALTH_TIMEOUT", "nan"),
    ],
)
def test_bad_monitor_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env()


def test_monitor_settings_reach_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_HEALTH_INTERVAL", "0.5")
    monkeypatch.setenv("BUS_HEALTH_TIMEOUT", "0.25")
    options = Settings.from_env().edge_options()
    assert (options["health_interval"], options["health_timeout"]) == (0.5, 0.25)


def cli(args: list[str], env: dict[str, str]) -> str:
    ran = subprocess.run([BUS, *args], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


@pytest.mark.slow
async def test_a_killed_worker_is_reported_failing(
    monitored: httpx.AsyncClient, tasks: Bus, nats_url: str, tmp_path: Path
) -> None:
    """A real `bus worker` registers and passes; SIGKILLed, the edge reports it failing
    (within the deadline) in the API, the metric, /health, `bus components` and `bus status`."""
    env = {**os.environ, "BUS_NATS_URL": nats_url, "BUS_DATA_DIR": str(tmp_path)}
    env.pop("BUS_METRICS_PORT", None)
    log = tmp_path / "worker.log"
    with running([BUS, "worker", "--app", "services.demo:app"], log, env) as worker:

        async def passing() -> dict[str, Any] | None:
            assert worker.poll() is None, log.read_text()
            found = await verdict_of(monitored, "tasks-worker")
            return found if found and found["status"] == "pass" else None

        alive = await until(passing, 60)
        assert alive["health_url"].endswith("/health")
        assert alive["latency_ms"] is not None
        [me] = [c for c in await listing(tasks) if c["name"] == "tasks-worker"]
        assert me["health"].status == "pass"

        worker.send_signal(signal.SIGKILL)
        worker.wait()

        async def failing() -> dict[str, Any] | None:
            found = await verdict_of(monitored, "tasks-worker")
            return found if found and found["status"] == "fail" else None

        dead = await until(failing)
        assert dead["reason"].startswith(("unreachable: ConnectError", "no heartbeat"))
        metrics = (await monitored.get("/metrics")).text
        assert 'bus_component_up{component="tasks-worker"} 0.0' in metrics
        body = (await monitored.get("/health")).json()
        assert body["status"] == "warn"
        assert "component:tasks-worker" in body["checks"]

        table = await asyncio.to_thread(cli, ["components"], {**env, "COLUMNS": "200"})
        [row] = [line for line in table.splitlines() if "tasks-worker" in line]
        assert "fail" in row
        status = json.loads(await asyncio.to_thread(cli, ["status", "--json"], env))
        [verdict] = [v for v in status["health"] if v["name"] == "tasks-worker"]
        assert verdict["status"] == "fail"
        shown = Console(file=io.StringIO(), width=200)
        shown.print(render(await collect(tasks, app)))
        assert re.search(r"tasks-worker.*fail \(checked \d+ s ago\): ", shown.file.getvalue())


class Cable:
    """A TCP relay between a process and its NATS server, to cut that process off alone."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("nats://").rsplit(":", 1)
        self.target = (host, int(port))
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """No new connection, and the open ones closed."""
        if self.server is not None:
            self.server.close()
        for writer in self.links:
            writer.close()


@pytest.mark.slow
async def test_a_worker_cut_off_from_nats_is_reported_failing(
    monitored: httpx.AsyncClient, nats_url: str, tmp_path: Path
) -> None:
    """A real `bus worker` whose NATS connection is cut (the edge's is not): its health URL
    answers 503 and its heartbeats stop, and the edge reports it failing."""
    async with Cable(nats_url) as cable:
        env = {**os.environ, "BUS_NATS_URL": cable.url, "BUS_DATA_DIR": str(tmp_path)}
        env.pop("BUS_METRICS_PORT", None)
        log = tmp_path / "worker.log"
        with running([BUS, "worker", "--app", "services.demo:app"], log, env) as worker:

            async def status_is(wanted: str) -> dict[str, Any] | None:
                assert worker.poll() is None, log.read_text()
                found = await verdict_of(monitored, "tasks-worker")
                return found if found and found["status"] == wanted else None

            await until(lambda: status_is("pass"), 60)
            await cable.cut()
            failed = await until(lambda: status_is("fail"))
            # its own /health says why (unless the check comes after two missed heartbeats):
            # NATS lost, or JetStream not answering when the check began before the client
            # noticed the cut
            said = ("HTTP 503: nats:connected", "HTTP 503: jetstream:responseTime", "no heartbeat")
            assert failed["reason"].startswith(said)
            body = (await monitored.get("/health")).json()
            assert body["status"] == "warn"
            assert "component:tasks-worker" in body["checks"]


def test_verdicts_travel_as_json() -> None:
    verdict = ComponentHealth(
        name="w", instance="h-1", status="warn", reason="x", checked_at="2026-01-01T00:00:00Z"
    )
    assert msgspec.json.decode(msgspec.json.encode(verdict), type=ComponentHealth) == verdict


@pytest.mark.parametrize(
    ("code", "body", "verdict"),
    [
        (200, b"", ("pass", "")),
        (204, b"not json", ("pass", "")),
        (
            200,
            b'{"status": "fail", "checks": {"a": [{"status": "fail"}]}}',
            ("fail", "reports fail: a"),
        ),
        (200, b'{"status": "warn", "checks": "odd"}', ("warn", "reports warn")),
        (200, b'["status", "fail"]', ("pass", "")),
        (200, b'{"status": "exploded"}', ("pass", "")),
        (200, b"[" * 65536, ("pass", "")),
        (503, b'{"a": ' * 20000, ("fail", "HTTP 503")),
        (301, b"", ("warn", "HTTP 301: redirects to ? (not followed)")),
        (404, b"<html>", ("fail", "HTTP 404")),
        (500, b'{"checks": {"x\\u0000y": [{"status": "warn"}]}}', ("fail", "HTTP 500: x y")),
    ],
)
def test_answers_are_judged_by_status_code_then_body(
    code: int, body: bytes, verdict: tuple[str, str]
) -> None:
    assert _judge(httpx.Response(code), body) == verdict


def test_many_failing_checks_are_summarised() -> None:
    checks = {f"c{n}": [{"status": "fail"}] for n in range(50)}
    body = msgspec.json.encode({"status": "fail", "checks": checks})
    status, reason = _judge(httpx.Response(503), body)
    assert (status, reason) == ("fail", "HTTP 503: c0, c1, c2, c3, c4 (+45 more)")


async def test_an_existing_bucket_is_given_a_longer_ttl(bus: Bus) -> None:
    verdict = ComponentHealth(name="w", instance="i", status="pass", checked_at="now")
    await HealthRecords(bus, ttl=30.0).put([verdict])
    await HealthRecords(bus, ttl=120.0).put([verdict])
    await HealthRecords(bus, ttl=60.0).put([verdict])  # a shorter one leaves it be
    info = await bus.js.stream_info("KV_bus_component_health")
    assert info.config.max_age == 120.0
    assert await HealthRecords(bus).read("w") == [verdict]
    assert await HealthRecords(bus).read("other") == []
    with pytest.raises(ConfigError):
        await HealthRecords(bus).read("no.dots")


async def test_more_verdicts_than_one_direct_get_returns_are_all_read(bus: Bus) -> None:
    """Past a thousand or so keys the server refuses a multi-subject read: read page by page."""
    verdicts = [
        ComponentHealth(name=f"c{n}", instance="i", status="pass", checked_at="now")
        for n in range(1100)
    ]
    await HealthRecords(bus).put(verdicts)
    assert len(await HealthRecords(bus).read()) == 1100
