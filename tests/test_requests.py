"""`POST /api/v1/requests/{subject}` and MCP's `call_service` against a real edge (uvicorn) and
a real nats-server: the demo's `tasks.get`, timeouts, nobody serving, an open circuit, and
bad or hostile input refused before anything is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from bus import Bus, CircuitPolicy, ConfigError, ProjectionView, RemoteError, Responder
from services.demo import GetTask, TaskCreated, TaskView, app, get_task
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve
from tests.test_mcp import mcp_client

PROBLEM = "application/problem+json"


@pytest.fixture
async def responder(tasks: Bus) -> AsyncIterator[Responder]:
    """The demo's `tasks.get`, served by the test's bus."""
    served = await tasks.serve("tasks.get", get_task, service="tasks")
    yield served
    await served.stop()


@pytest.fixture
async def guarded(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An edge whose circuits open after two failures and stay open a minute."""
    policy = CircuitPolicy(failures=2, cool_down=60)
    async for client in serve(create_app(app, nats_url, api_keys=KEYS, circuits=policy)):
        yield client


async def created(bus: Bus, task: str, title: str) -> None:
    result = await bus.publish(TaskCreated(title=title), task)
    await ProjectionView(bus, app.projection("task")).wait_for(result.seq, timeout=10)


async def test_a_served_request_answers_with_the_reply(
    edge: httpx.AsyncClient, tasks: Bus, responder: Responder
) -> None:
    await created(tasks, "r1", "asked over HTTP")
    got = await edge.post("/api/v1/requests/tasks.get", json={"id": "r1"}, headers=WRITE)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"status": "created", "title": "asked over HTTP", "attempts": 0,
                          "version": 1}  # fmt: skip

    missing = await edge.post("/api/v1/requests/tasks.get", json={"id": "nope"}, headers=WRITE)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert "no task 'nope'" in missing.json()["detail"]

    scraped = (await edge.get("/metrics")).text
    assert 'rpc_client_call_duration_seconds_count{outcome="ok",rpc_method="tasks.get"} 1.0' in (
        scraped
    )
    assert 'outcome="refused",rpc_method="tasks.get"} 1.0' in scraped


async def test_a_slow_responder_is_a_504(edge: httpx.AsyncClient, tasks: Bus) -> None:
    release = asyncio.Event()

    async def slow(request: GetTask) -> TaskView:
        await release.wait()
        return TaskView()

    served = await tasks.serve("tasks.get", slow, service="tasks")
    try:
        got = await edge.post(
            "/api/v1/requests/tasks.get", params={"timeout": 0.2}, json={"id": "x"}, headers=WRITE
        )
        assert got.status_code == 504
        assert got.headers["content-type"] == PROBLEM
    finally:
        release.set()
        await served.stop()


async def test_nobody_serving_then_an_open_circuit_are_503s_with_retry_after(
    guarded: httpx.AsyncClient, tasks: Bus
) -> None:
    for _ in range(2):
        nobody = await guarded.post("/api/v1/requests/tasks.get", json={"id": "x"}, headers=WRITE)
        assert nobody.status_code == 503
        assert nobody.headers["retry-after"] == "1"
        assert "no responders" in nobody.json()["detail"]
    served = await tasks.serve("tasks.get", get_task, service="tasks")  # too late: it is open
    try:
        refused = await guarded.post("/api/v1/requests/tasks.get", json={"id": "x"}, headers=WRITE)
        assert refused.status_code == 503
        assert 55 <= int(refused.headers["retry-after"]) <= 60
        assert "circuit open" in refused.json()["detail"]
        scraped = (await guarded.get("/metrics")).text
        assert 'bus_circuit_breaker_state{rpc_method="tasks.get"} 2.0' in scraped
    finally:
        await served.stop()


async def test_a_responder_failing_is_a_502(edge: httpx.AsyncClient, tasks: Bus) -> None:
    async def broken(request: GetTask) -> TaskView:
        raise RuntimeError("the disk is on fire\r\nInjected: header")

    served = await tasks.serve("tasks.get", broken, service="tasks")
    try:
        got = await edge.post("/api/v1/requests/tasks.get", json={"id": "x"}, headers=WRITE)
        assert got.status_code == 502
        assert "the disk is on fire" in got.json()["detail"]
        assert "\n" not in got.json()["detail"]
    finally:
        await served.stop()


@pytest.mark.parametrize(
    ("subject", "status"),
    [
        ("$JS.API.STREAM.DELETE.TASKS", 400),
        ("$SRV.PING", 400),
        ("$SRV.INFO.tasks", 400),
        ("_INBOX.abc", 404),
        ("tasks.r1.created", 404),
        ("projector.rebuild.task", 404),
        ("tasks.*", 400),
        ("tasks.>", 400),
        (">", 400),
        ("tasks..get", 400),
        ("tasks.get." + "x" * 300, 404),
        ("tasks.get." + "x" * 5000, 400),
    ],
)
async def test_only_subjects_the_app_serves_are_reachable(
    edge: httpx.AsyncClient, tasks: Bus, subject: str, status: int
) -> None:
    seen: list[str] = []

    async def spy(msg: object) -> None:
        seen.append(getattr(msg, "subject", "?"))

    sub = await tasks.nc.subscribe(">", cb=spy)  # anything the edge sends, we see
    await tasks.nc.flush()
    got = await edge.post(f"/api/v1/requests/{subject}", json={"id": "r1"}, headers=WRITE)
    await tasks.nc.flush()
    await sub.unsubscribe()
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == PROBLEM
    assert subject not in seen
    assert "tasks.get" not in seen
    assert (await tasks.streams.info("TASKS")).name == "TASKS"  # nothing changed


@pytest.mark.parametrize(
    ("body", "params", "status"),
    [
        (b"{not json", {}, 400),
        (b"", {}, 400),
        (json.dumps({"id": 5}).encode(), {}, 422),
        (json.dumps({"id": ""}).encode(), {}, 422),
        (json.dumps({"id": "x" * 129}).encode(), {}, 422),
        (json.dumps({"id": "x", "extra": 1}).encode(), {}, 422),
        (json.dumps(["x"]).encode(), {}, 422),
        (json.dumps({"id": "x"}).encode(), {"timeout": "0"}, 422),
        (json.dumps({"id": "x"}).encode(), {"timeout": "31"}, 422),
        (json.dumps({"id": "x"}).encode(), {"timeout": "soon"}, 422),
        (json.dumps({"id": "x"}).encode(), {"timeout": "nan"}, 422),
        (json.dumps({"id": "x" * 70_000}).encode(), {}, 413),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    edge: httpx.AsyncClient,
    tasks: Bus,
    responder: Responder,
    body: bytes,
    params: dict[str, str],
    status: int,
) -> None:
    asked: list[object] = []

    async def spy(msg: object) -> None:
        asked.append(msg)

    sub = await tasks.nc.subscribe("tasks.get", cb=spy)
    await tasks.nc.flush()
    got = await edge.post(
        "/api/v1/requests/tasks.get",
        content=body,
        params=params,
        headers={**WRITE, "Content-Type": "application/json"},
    )
    await tasks.nc.flush()
    await sub.unsubscribe()
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == PROBLEM
    assert asked == []


async def test_requests_need_the_write_scope(edge: httpx.AsyncClient, responder: Responder) -> None:
    anonymous = await edge.post("/api/v1/requests/tasks.get", json={"id": "x"})
    assert anonymous.status_code == 401
    reader = await edge.post("/api/v1/requests/tasks.get", json={"id": "x"}, headers=READ)
    assert reader.status_code == 403


async def test_mcp_call_service(edge: httpx.AsyncClient, tasks: Bus, responder: Responder) -> None:
    await created(tasks, "m1", "asked by an agent")
    async with mcp_client(edge, "w-key", "legacy") as client:
        found = await client.call_tool(
            "call_service", {"subject": "tasks.get", "data": {"id": "m1"}}
        )
        assert not found.is_error, found.content
        assert json.loads(found.content[0].text)["title"] == "asked by an agent"  # type: ignore[union-attr]
        missing = await client.call_tool(
            "call_service", {"subject": "tasks.get", "data": {"id": "nope"}}
        )
        assert missing.is_error
        assert "404: " in missing.content[0].text  # type: ignore[union-attr]
        hostile = await client.call_tool(
            "call_service", {"subject": "$JS.API.STREAM.DELETE.TASKS", "data": {}}
        )
        assert hostile.is_error
        assert "400: " in hostile.content[0].text  # type: ignore[union-attr]
        wrong = await client.call_tool("call_service", {"subject": "tasks.get", "data": {"id": 1}})
        assert wrong.is_error
        assert "422: " in wrong.content[0].text  # type: ignore[union-attr]
        slow = await client.call_tool(
            "call_service", {"subject": "tasks.get", "data": {"id": "m1"}, "timeout": 99}
        )
        assert slow.is_error
        assert "422: " in slow.content[0].text  # type: ignore[union-attr]
    async with mcp_client(edge, "r-key", "legacy") as client:
        refused = await client.call_tool(
            "call_service", {"subject": "tasks.get", "data": {"id": "m1"}}
        )
        assert refused.is_error
        assert "403" in refused.content[0].text  # type: ignore[union-attr]
    assert (await tasks.streams.info("TASKS")).messages == 1


async def test_a_responder_is_refused_where_it_could_not_answer(tasks: Bus) -> None:
    """Refused before it serves: a subject the TASKS stream captures (JetStream would store
    and ack every request), a version or queue group nats.micro rejects. A subject with
    characters an endpoint name cannot hold is served all the same."""
    with pytest.raises(ConfigError, match="stored by stream 'TASKS'"):
        await tasks.serve("tasks.t1.created", get_task, service="tasks")
    with pytest.raises(ConfigError):
        await tasks.serve("svc.get", get_task, service="svc", version="not-semver")
    with pytest.raises(ConfigError):
        await tasks.serve("svc.get", get_task, service="svc", queue_group="a b")
    served = await tasks.serve("svc.a:b", get_task, service="svc")
    try:
        with pytest.raises(RemoteError) as missing:
            await tasks.request("svc.a:b", GetTask(id="nope"), TaskView)
        assert missing.value.code == 404
    finally:
        await served.stop()


async def test_a_request_larger_than_the_server_takes_is_refused_unsent(tasks: Bus) -> None:
    with pytest.raises(ConfigError, match="larger than the server takes"):
        await tasks.request("svc.big", GetTask(id="x" * 2_000_000), TaskView)
    assert tasks.connected  # the server was not sent it (it would close the connection)


async def test_a_cancelled_request_leaves_nothing_behind(tasks: Bus) -> None:
    release = asyncio.Event()

    async def slow(request: GetTask) -> TaskView:
        await release.wait()
        return TaskView(title=request.id)

    served = await tasks.serve("svc.slow", slow, service="svc")
    try:
        asking = asyncio.create_task(tasks.request("svc.slow", GetTask(id="a"), TaskView))
        await asyncio.sleep(0)  # (it is sent)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        release.set()
        assert await tasks.request("svc.slow", GetTask(id="b"), TaskView) == TaskView(title="b")
        assert tasks.circuits.snapshot() == {}
    finally:
        await served.stop()
