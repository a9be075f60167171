"""Trace context passes through a process that traces nothing: a `traceparent` (and
`tracestate`) received over HTTP or MCP is stored with the event and carried on by what the
worker publishes while handling it, so a traced component downstream continues the caller's
trace. Against a real `bus up` with no `OTEL_*` settings (and one with tracing on)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from bus import Bus, EmbeddedServer, StoredMessage
from bus._server import free_port
from tests.otlp import Receiver
from tests.processes import BUS, running, wait_ready

KEY = "pass-key"
TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{SPAN}-01"
STATE = "vendor=abc,other=1"


@dataclass
class Up:
    edge: str
    nats_url: str

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {KEY}", **headers}
        return httpx.post(f"{self.edge}{path}", json=body, headers=auth, timeout=10)


@contextlib.contextmanager
def bus_up(tmp_path: Path, **otel: str) -> Iterator[Up]:
    """`bus up` on a server of the test's, with exactly the `OTEL_*` settings given."""
    port = free_port()
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {
            "BUS_NATS_URL": server.url,
            "BUS_DATA_DIR": str(tmp_path),
            "BUS_EDGE_PORT": str(port),
            "BUS_API_KEYS": f"{KEY}:read+write",
            **otel,
        }
        log = tmp_path / "up.log"
        with running([BUS, "up"], log, env) as process:
            up = Up(f"http://127.0.0.1:{port}", server.url)
            wait_ready(up.edge, process, log)
            yield up


@pytest.fixture(scope="module")
def untraced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with bus_up(tmp_path_factory.mktemp("untraced")) as up:
        yield up


def stored(up: Up, subjects: str, count: int) -> list[StoredMessage]:
    """The first `count` messages on `subjects` in TASKS, once there are that many."""

    async def read() -> list[StoredMessage]:
        async with Bus(up.nats_url) as bus:
            deadline = time.monotonic() + 20
            while len(found := await bus.read("TASKS", 1, 100, subjects)) < count:
                assert time.monotonic() < deadline, f"{len(found)} of {count} on {subjects}"
                await asyncio.sleep(0.1)
            return found[:count]

    return asyncio.run(read())


def _task() -> str:
    return f"tp{uuid.uuid4().hex[:12]}"


def _trace_of(messages: list[StoredMessage]) -> list[tuple[str | None, str | None]]:
    return [(m.headers.get("traceparent"), m.headers.get("tracestate")) for m in messages]


def test_a_posted_traceparent_reaches_the_event_and_the_workers_follow_ups(untraced: Up) -> None:
    task = _task()
    posted = untraced.post(
        f"/api/v1/events/tasks.{task}.created", {"title": "x"}, traceparent=PARENT, tracestate=STATE
    )
    assert posted.status_code == 201, posted.text
    created, progressed, completed = stored(untraced, f"tasks.{task}.*", 3)
    assert [m.subject.rsplit(".", 1)[1] for m in (created, progressed, completed)] == [
        "created",
        "progressed",
        "completed",
    ]
    assert _trace_of([created, progressed, completed]) == [(PARENT, STATE)] * 3


def test_a_batch_carries_the_traceparent_on_every_event(untraced: Up) -> None:
    task = _task()
    batch = {
        "domain": "tasks",
        "id": task,
        "events": [
            {"event": "progressed", "data": {"attempt": 1}},
            {"event": "completed", "data": {"attempts": 1}},
        ],
    }
    posted = untraced.post("/api/v1/events:batch", batch, traceparent=PARENT)
    assert posted.status_code == 201, posted.text
    assert _trace_of(stored(untraced, f"tasks.{task}.*", 2)) == [(PARENT, None)] * 2


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id: no parent
        f"ff-{TRACE}-{SPAN}-01",  # the version W3C forbids
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE.upper()}-{SPAN}-01",
        "x" * 4000,
    ],
)
def test_a_malformed_traceparent_is_not_passed_on(untraced: Up, traceparent: str) -> None:
    task = _task()
    posted = untraced.post(
        f"/api/v1/events/tasks.{task}.created",
        {"title": "x"},
        traceparent=traceparent,
        tracestate=STATE,
    )
    assert posted.status_code == 201, posted.text
    assert _trace_of(stored(untraced, f"tasks.{task}.*", 3)) == [(None, None)] * 3


def test_a_later_version_is_passed_on_as_version_00(untraced: Up) -> None:
    """As OpenTelemetry's propagator reads it: the fields it knows, written as it writes."""
    task = _task()
    later = f"01-{TRACE}-{SPAN}-01-whatever-comes-next"
    posted = untraced.post(
        f"/api/v1/events/tasks.{task}.created", {"title": "x"}, traceparent=later
    )
    assert posted.status_code == 201, posted.text
    assert _trace_of(stored(untraced, f"tasks.{task}.*", 3)) == [(PARENT, None)] * 3


def test_the_legacy_mcp_route_passes_the_traceparent_on(untraced: Up) -> None:
    task = _task()
    call = {
        "name": "publish_event",
        "arguments": {"subject": f"tasks.{task}.created", "data": {"title": "x"}},
    }
    answer = untraced.post("/mcp/v2/tools/call", call, traceparent=PARENT).json()
    assert answer["isError"] is False, answer
    assert _trace_of(stored(untraced, f"tasks.{task}.*", 3)) == [(PARENT, None)] * 3


@contextlib.asynccontextmanager
async def mcp(up: Up, mode: str, **headers: str) -> AsyncIterator[Client]:
    auth = {"Authorization": f"Bearer {KEY}", **headers}
    async with (
        httpx2.AsyncClient(headers=auth) as http,
        Client(streamable_http_client(f"{up.edge}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("carrier", ["http header", "_meta"])
def test_mcp_passes_the_traceparent_on(untraced: Up, mode: str, carrier: str) -> None:
    """The request's header, or the MCP message's `_meta` (which the SDK's client fills from
    the caller's current span; with both, `_meta` is the nearer one)."""
    task = _task()
    other = f"00-{'1' * 32}-{'2' * 16}-01"

    async def call() -> None:
        headers = {"traceparent": PARENT if carrier == "http header" else other}
        async with mcp(untraced, mode, **headers) as client:
            token = None
            if carrier == "_meta":
                caller = SpanContext(int(TRACE, 16), int(SPAN, 16), False, TraceFlags(1))
                token = context.attach(trace.set_span_in_context(NonRecordingSpan(caller)))
            try:
                arguments = {"subject": f"tasks.{task}.created", "data": {"title": "x"}}
                result = await client.call_tool("publish_event", arguments)
            finally:
                if token is not None:
                    context.detach(token)
            assert not result.is_error, result.content

    asyncio.run(call())
    assert _trace_of(stored(untraced, f"tasks.{task}.*", 3)) == [(PARENT, None)] * 3


@pytest.mark.slow
def test_with_tracing_on_the_request_span_is_the_parent_not_the_caller(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Nothing is written twice: the stored traceparent is the edge's publish span's, in the
    caller's trace, and the follow-ups are the worker's, in it too."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with bus_up(tmp_path, **otel) as up:
        task = _task()
        posted = up.post(f"/api/v1/events/tasks.{task}.created", {"title": "x"}, traceparent=PARENT)
        assert posted.status_code == 201, posted.text
        messages = stored(up, f"tasks.{task}.*", 3)
    parents = [m.headers["traceparent"].split("-") for m in messages]
    assert {p[1] for p in parents} == {TRACE}  # the caller's trace...
    assert SPAN not in {p[2] for p in parents}  # ...continued by spans of this process
    assert len({p[2] for p in parents}) == 3
