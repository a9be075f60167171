"""The edge under a real uvicorn server, talked to with httpx, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from bus import Bus, Projector
from bus._server import free_port
from services.bench import http as bench_http
from services.demo import TaskCreated, TaskFailed, app
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve, sse_events


async def stored(bus: Bus) -> int:
    return (await bus.streams.info("TASKS")).messages


async def test_health(edge: httpx.AsyncClient) -> None:
    assert (await edge.get("/livez")).json() == {"status": "pass"}
    assert (await edge.get("/readyz")).status_code == 200
    health = await edge.get("/health")
    assert health.headers["content-type"] == "application/health+json"
    body = health.json()
    assert body["status"] == "pass"
    assert body["checks"]["stream:TASKS"][0]["status"] == "pass"
    assert body["checks"]["projection:task:lag"][0]["observedUnit"] == "events"


async def test_readyz_fails_without_the_streams(nats_url: str) -> None:
    async for client in serve(create_app(app, nats_url, api_keys=KEYS)):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "fail"


async def test_publish_then_read_your_write(edge: httpx.AsyncClient, tasks: Bus) -> None:
    posted = await edge.post(
        "/api/v1/events/tasks.e1.created", json={"title": "ünï ✓"}, headers=WRITE
    )
    assert posted.status_code == 201
    result = posted.json()
    assert (result["stream"], result["seq"]) == ("TASKS", 1)
    got = await edge.get(f"/api/v1/projections/task/e1?after_seq={result['seq']}", headers=READ)
    assert got.status_code == 200
    assert got.json()["state"]["title"] == "ünï ✓"
    listed = (await edge.get("/api/v1/projections/task?prefix=e", headers=READ)).json()
    assert [item["key"] for item in listed["items"]] == ["e1"]
    statuses = (await edge.get("/api/v1/projections", headers=READ)).json()
    assert {s["name"] for s in statuses} == {"task", "task_counts"}


async def test_idempotency_key_and_if_match(edge: httpx.AsyncClient, tasks: Bus) -> None:
    headers = {**WRITE, "Idempotency-Key": "req-1"}
    first = await edge.post("/api/v1/events/tasks.i1.created", json={"title": "a"}, headers=headers)
    again = await edge.post("/api/v1/events/tasks.i1.created", json={"title": "a"}, headers=headers)
    assert first.json() == again.json()
    assert first.json()["id"] == "req-1"
    assert await stored(tasks) == 1
    conflict = await edge.post(
        "/api/v1/events/tasks.i1.created", json={"title": "b"}, headers={**WRITE, "If-Match": "0"}
    )
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    assert (conflict.json()["expected"], conflict.json()["actual"]) == (0, 1)
    ok = await edge.post(
        "/api/v1/events/tasks.i1.created", json={"title": "b"}, headers={**WRITE, "If-Match": "1"}
    )
    assert ok.status_code == 201


@pytest.mark.parametrize(
    ("subject", "body", "headers", "status", "detail"),
    [
        ("tasks.b1.created", b"{not json", {}, 400, "not valid JSON"),
        ("tasks.b1.created", b'{"title": 5}', {}, 422, "Expected `str`, got `int`"),
        ("tasks.b1.created", b'{"title": "x", "evil": 1}', {}, 422, "unknown field(s) evil"),
        ("tasks.b1.created", b'["title"]', {}, 422, "must be a JSON object"),
        ("tasks.b1.created", b"{}", {}, 422, "missing required field `title`"),
        ("tasks.b1.created", b'{"title": "x"}', {"If-Match": "latest"}, 400, "version number"),
        ("tasks.b1.created", b'{"title": "x"}', {"Idempotency-Key": "a b"}, 400, "Idempotency-Key"),
        ("tasks.b1.nope", b"{}", {}, 404, "no event type"),
        ("tasks.b 1.created", b"{}", {}, 400, "invalid subject"),
        ("tasks.*.created", b"{}", {}, 400, "invalid subject"),
        ("tasks.b1", b"{}", {}, 400, "expected <domain>.<aggregate_id>.<event_name>"),
        ("tasks.b1.created", b'{"title": "' + b"x" * 70_000 + b'"}', {}, 413, "larger than"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_published(
    edge: httpx.AsyncClient,
    tasks: Bus,
    subject: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = await edge.post(
        f"/api/v1/events/{subject}",
        content=body,
        headers={**WRITE, "Content-Type": "application/json", **headers},
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert "Traceback" not in response.text
    assert await stored(tasks) == 0


@pytest.mark.parametrize(
    ("headers", "write_status", "read_status"),
    [
        ({}, 401, 401),
        ({"Authorization": "Bearer nope"}, 401, 401),
        ({"Authorization": "Basic w-key"}, 401, 401),
        (READ, 403, 200),
        (WRITE, 201, 200),
    ],
)
async def test_auth_matrix(
    edge: httpx.AsyncClient, headers: dict[str, str], write_status: int, read_status: int
) -> None:
    write = await edge.post("/api/v1/events/tasks.a1.created", json={"title": "x"}, headers=headers)
    assert write.status_code == write_status
    read = await edge.get("/api/v1/projections", headers=headers)
    assert read.status_code == read_status
    if write_status == 401:
        challenge = (
            "Bearer"
            if "Authorization" not in headers or "Basic" in str(headers)
            else ('Bearer error="invalid_token", error_description="unknown API key"')
        )
        assert write.headers["www-authenticate"] == challenge


async def test_projection_queries_errors_and_staleness(edge: httpx.AsyncClient) -> None:
    missing = await edge.get("/api/v1/projections/nope/x", headers=READ)
    assert missing.status_code == 404
    assert (await edge.get("/api/v1/projections/task/nobody", headers=READ)).status_code == 404
    assert (await edge.get("/api/v1/projections/task?limit=0", headers=READ)).status_code == 422
    await edge.post("/api/v1/events/tasks.s1.created", json={"title": "x"}, headers=WRITE)
    far = "/api/v1/projections/task/s1?after_seq=999&timeout=0.3"
    late = await edge.get(far, headers=READ)
    assert late.status_code == 504
    assert late.headers["content-type"] == "application/problem+json"
    stale = await edge.get(far + "&stale_ok=true", headers=READ)
    assert stale.status_code == 200
    assert stale.headers["bus-stale"] == "true"
    # The fast path declines what it cannot serve; the route refuses it, as documented.
    for query in ("after_seq=0", "after_seq=abc", "timeout=99", "timeout=0", "stale_ok=maybe"):
        refused = await edge.get(f"/api/v1/projections/task/s1?{query}", headers=READ)
        assert refused.status_code == 422, query
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await edge.get("/api/v1/projections/task/s1")).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await edge.get("/api/v1/projections/task/s1", headers=wrong)).status_code == 401


async def test_openapi_describes_the_routes(edge: httpx.AsyncClient) -> None:
    spec = (await edge.get("/openapi.json")).json()
    assert "/api/v1/events/{subject}" in spec["paths"]
    assert "/api/v1/projections/{name}/{key}" in spec["paths"]


async def test_streams_events_components_and_schemas(edge: httpx.AsyncClient, tasks: Bus) -> None:
    for i in range(3):
        await edge.post(f"/api/v1/events/tasks.c{i}.created", json={"title": str(i)}, headers=WRITE)
    await tasks.js.publish("tasks.bad.created", b"\xff")
    streams = (await edge.get("/api/v1/streams", headers=READ)).json()
    assert {s["name"] for s in streams} >= {"TASKS", "DLQ_TASKS"}
    assert (await edge.get("/api/v1/streams/TASKS", headers=READ)).json()["messages"] == 4
    assert (await edge.get("/api/v1/streams/NOPE", headers=READ)).status_code == 404
    page = (await edge.get("/api/v1/streams/TASKS/events?limit=2", headers=READ)).json()
    assert [e["type"] for e in page["items"]] == ["TaskCreated", "TaskCreated"]
    assert page["items"][0]["data"] == {"title": "0", "fail_times": 0}
    rest = await edge.get(f"/api/v1/streams/TASKS/events?from_seq={page['next_seq']}", headers=READ)
    assert "undecodable" in rest.json()["items"][-1]
    assert rest.json()["next_seq"] is None
    bad = await edge.get("/api/v1/streams/TASKS/events?from_seq=0", headers=READ)
    assert bad.status_code == 422
    assert (await edge.get("/api/v1/components", headers=READ)).json() == []
    schemas = (await edge.get("/api/v1/schemas", headers=READ)).json()
    assert "TaskCreated" in schemas["$defs"]
    assert (await edge.get("/api/v1/schemas")).status_code == 401


async def test_batch_is_atomic_and_validated(edge: httpx.AsyncClient, tasks: Bus) -> None:
    batch = {
        "domain": "tasks",
        "id": "b1",
        "events": [
            {"event": "created", "data": {"title": "batch"}},
            {"event": "progressed", "data": {"attempt": 1}},
            {"event": "completed", "data": {"attempts": 1}},
        ],
        "expected_version": 0,
    }
    first = await edge.post("/api/v1/events:batch", json=batch, headers=WRITE)
    assert first.status_code == 201, first.text
    assert [e["seq"] for e in first.json()["events"]] == [1, 2, 3]
    assert first.json()["version"] == 3
    again = await edge.post("/api/v1/events:batch", json=batch, headers=WRITE)
    assert again.status_code == 409
    bad_cases = [
        (
            {
                **batch,
                "expected_version": 3,
                "events": [*batch["events"][:1], {"event": "nope", "data": {}}],
            },
            404,
        ),
        (
            {
                **batch,
                "expected_version": 3,
                "events": [{"event": "created", "data": {"title": 1}}],
            },
            422,
        ),
        ({**batch, "expected_version": 3, "events": [{"event": "created", "data": {"x": 1}}]}, 422),
        ({**batch, "events": []}, 422),
        ({**batch, "events": [{"event": "created", "data": {"title": "x"}}] * 1001}, 422),
        ({**batch, "id": "bad id"}, 400),
        ({**batch, "surprise": True}, 422),
    ]
    for body, status in bad_cases:
        response = await edge.post("/api/v1/events:batch", json=body, headers=WRITE)
        assert response.status_code == status, (status, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    malformed = await edge.post("/api/v1/events:batch", content=b"{", headers=WRITE)
    assert malformed.status_code == 400
    assert (await edge.post("/api/v1/events:batch", json=batch)).status_code == 401
    assert await stored(tasks) == 3


def test_bus_edge_runs_alone_and_prints_its_dev_key(nats_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "BUS_NATS_URL": nats_url, "BUS_EDGE_PORT": str(port)}
    env.pop("BUS_API_KEYS", None)
    err = tmp_path / "edge.err"
    with (
        err.open("w") as stderr,
        subprocess.Popen(
            [str(Path(sys.executable).parent / "bus"), "edge"], env=env, stderr=stderr
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError("bus edge did not answer")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    printed = err.read_text()
    assert "development API key:" in printed
    key = printed.split("development API key:")[1].split()[0]
    assert key not in printed.replace(f"development API key: {key}", "")  # shown once, not logged


async def read_sse(edge: httpx.AsyncClient, count: int, **headers: str) -> list[dict[str, str]]:
    """The first `count` SSE events of /events?subject=tasks.>, then disconnect."""
    query = "/events?subject=tasks.>" + ("" if "Last-Event-ID" in headers else "&from_seq=1")
    return await sse_events(edge, query, count, {**READ, **headers})


async def test_sse_resumes_exactly_after_last_event_id(edge: httpx.AsyncClient) -> None:
    for i in range(3):
        await edge.post(f"/api/v1/events/tasks.s{i}.created", json={"title": str(i)}, headers=WRITE)
    first = await read_sse(edge, 2)
    assert [e["id"] for e in first] == ["1", "2"]
    assert first[0]["event"] == "TaskCreated"
    assert json.loads(first[0]["data"])["data"] == {"title": "0", "fail_times": 0}
    await edge.post("/api/v1/events/tasks.s3.created", json={"title": "3"}, headers=WRITE)
    resumed = await read_sse(edge, 2, **{"Last-Event-ID": first[-1]["id"]})
    assert [e["id"] for e in resumed] == ["3", "4"]  # nothing missed, nothing repeated


async def test_sse_bad_requests(edge: httpx.AsyncClient) -> None:
    bad = [
        ("/events?subject=tasks.>.x", READ, 400),
        ("/events?subject=nowhere.>", READ, 404),
        ("/events?subject=tasks.>&from_seq=0", READ, 422),
        ("/events", READ, 422),
        ("/events?subject=tasks.>", {**READ, "Last-Event-ID": "x"}, 400),
        ("/events?subject=tasks.>", {}, 401),
    ]
    for url, headers, status in bad:
        response = await edge.get(url, headers=headers)
        assert response.status_code == status, (url, response.text)


async def test_the_http_bench_reads_its_writes_with_both_clients(nats_url: str) -> None:
    """`bus bench --scenario http` times httpx and a bare socket client on the same pairs,
    in every form (after_seq on a projection reading the event or not, a plain GET); each
    GET must answer, and with the POSTed event applied where it waits for it."""
    from services.bench.app import app as bench_app

    api = create_app(bench_app, nats_url, api_keys=f"{bench_http.KEY}:read+write", publish_rate=0)
    async with (
        Bus(nats_url, registry=bench_app.registry, streams=bench_app.streams) as bus,
        Projector(bus, bench_app.projections.values()),
    ):
        await bus.publish(TaskCreated(title="bench"), "b1")
        await bus.publish(TaskFailed(attempt=1, reason="bench"), "b0")  # the filtered case's key
        async for client in serve(api):
            base, port = str(client.base_url), client.base_url.port
            assert port is not None
            times = await asyncio.to_thread(bench_http._both_clients, base, port, 2, 1)
    counts = {name: len(pairs) for name, pairs in times.items()}
    assert counts == {
        f"{case} {client}": 2 for case in bench_http.PAIRS for client in ("httpx", "bare")
    }
