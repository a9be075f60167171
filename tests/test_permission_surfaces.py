"""Per-subject permissions beyond publishing and stream reads: projections (by the subjects
they read), shared state (`$KV.<bucket>.<key>`), requests (`request:`), workflows
(`$WF.<name>`) and dead letters, over HTTP and the MCP twin of each route; and the bypass
attempts on them (wildcards, `%2E`, encoded slashes, look-alike dots, overlong names, a
permitted stream's DLQ), refused with nothing changed. Real uvicorn, real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from mcp.shared.exceptions import MCPError

from bus import Bus, Projector
from services.edge import create_app
from services.edge.tokens import Tokens
from tests.access_app import make_app
from tests.edge import bearer, serve
from tests.test_mcp_completion import client_for, template, tool, values

SECRET = "permission-surfaces-secret-0123456789"
KEYS = ",".join(
    [
        "w-key:read+write@writer",
        "proj-key:read:tasks.>",
        "narrow-key:read:tasks.t1.*",
        "kv-key:read:$KV.settings.user1.>+publish:$KV.settings.user1.>@kv-user",
        "req-key:request:tasks.get",
        "wf-key:read:$WF.review+publish:$WF.review@wf-user",
        "dlq-key:read:dlq.TASKS.>",
    ]
)


@pytest.fixture
async def edge(nats_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Bus]]:
    app = make_app()
    api = create_app(app, nats_url, api_keys=KEYS, tokens=Tokens(secret=SECRET))
    async with (
        Bus(
            nats_url, registry=app.registry, streams=app.streams, buckets=app.buckets.values()
        ) as bus,
        Projector(bus, app.projections.values()),
    ):
        async for client in serve(api):
            yield client, bus


async def mcp(client: httpx.AsyncClient, who: str, tool: str, **arguments: Any) -> dict[str, Any]:
    answer = await client.post(
        "/mcp/v2/tools/call", json={"name": tool, "arguments": arguments}, headers=bearer(who)
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def refused(result: dict[str, Any], code: str = "403") -> bool:
    return bool(result["isError"]) and f": {code}: " in result["content"][0]["text"]


async def test_projections_by_the_subjects_they_read(
    edge: tuple[httpx.AsyncClient, Bus],
) -> None:
    client, _ = edge
    seq = (
        await client.post(
            "/api/v1/events/tasks.t1.created", json={"title": "x"}, headers=bearer("w-key")
        )
    ).json()["seq"]
    path = f"/api/v1/projections/task/t1?after_seq={seq}"
    assert (await client.get(path, headers=bearer("proj-key"))).status_code == 200
    assert (
        await client.get("/api/v1/projections/task", headers=bearer("proj-key"))
    ).status_code == 200
    listed = (await client.get("/api/v1/projections", headers=bearer("proj-key"))).json()
    assert {p["name"] for p in listed} == {"task", "task_counts"}  # not workflow_runs (wf.>)
    for denied, key in [
        ("/api/v1/projections/workflow_runs", "proj-key"),
        ("/api/v1/projections/task:rebuild", "narrow-key"),
        ("/api/v1/projections/task", "narrow-key"),
    ]:
        assert (await client.get(denied, headers=bearer(key))).status_code == 403, denied
    narrow = await client.get(path, headers=bearer("narrow-key"))  # tasks.t1.* covers not tasks.*.*
    assert narrow.status_code == 403
    assert narrow.json()["detail"] == (
        "this key or token lacks 'bus:read' of every subject projection task reads"
    )
    assert (await client.get("/api/v1/projections", headers=bearer("narrow-key"))).json() == []
    ok = await mcp(client, "proj-key", "query_projection", name="task", key="t1")
    assert not ok["isError"]
    assert refused(await mcp(client, "narrow-key", "query_projection", name="task", key="t1"))
    names = await mcp(client, "proj-key", "list_projections")
    assert "workflow_runs" not in names["content"][0]["text"]


async def test_shared_state_by_key(edge: tuple[httpx.AsyncClient, Bus]) -> None:
    client, bus = edge
    kv = bearer("kv-key")
    assert (await client.put("/api/v1/kv/settings/user1.a", json=1, headers=kv)).status_code == 200
    await client.put("/api/v1/kv/settings/user2.a", json=2, headers=bearer("w-key"))
    assert (await client.get("/api/v1/kv/settings/user1.a", headers=kv)).json() == 1
    assert (await client.get("/api/v1/kv/settings/user1.a/history", headers=kv)).status_code == 200
    listed = (await client.get("/api/v1/kv/settings", headers=kv)).json()["items"]
    assert [i["key"] for i in listed] == ["user1.a"]  # user2.a is not shown
    assert [b["name"] for b in (await client.get("/api/v1/kv", headers=kv)).json()] == ["settings"]
    async with client.stream("GET", "/api/v1/kv/settings:watch?key=user1.>", headers=kv) as w:
        assert w.status_code == 200
    denied = [
        client.get("/api/v1/kv/settings/user2.a", headers=kv),
        client.get("/api/v1/kv/settings/user2.a/history", headers=kv),
        client.put("/api/v1/kv/settings/user2.a", json=3, headers=kv),
        client.delete("/api/v1/kv/settings/user2.a", headers=kv),
        client.get("/api/v1/kv/notes", headers=kv),
        client.get("/api/v1/kv/notes/user1.a", headers=kv),
    ]
    for request in denied:
        answer = await request
        assert answer.status_code == 403, answer.request.url
        assert "'bus:" in answer.json()["detail"]
    async with client.stream("GET", "/api/v1/kv/settings:watch?key=>", headers=kv) as w:
        assert w.status_code == 403
    written = await mcp(client, "kv-key", "set_state", bucket="settings", key="user1.b", value=4)
    assert not written["isError"]
    assert not (await mcp(client, "kv-key", "get_state", bucket="settings", key="user1.b"))[
        "isError"
    ]
    assert refused(await mcp(client, "kv-key", "get_state", bucket="settings", key="user2.a"))
    assert refused(
        await mcp(client, "kv-key", "set_state", bucket="settings", key="user2.a", value=5)
    )
    assert (await bus.bucket("settings").get("user2.a")).value == 2  # type: ignore[union-attr]


async def test_requests_by_subject(edge: tuple[httpx.AsyncClient, Bus]) -> None:
    client, _ = edge
    body = {"id": "t1"}
    allowed = await client.post("/api/v1/requests/tasks.get", json=body, headers=bearer("req-key"))
    assert allowed.status_code == 503  # let in; nobody serves it in this test
    other = await client.post("/api/v1/requests/tasks.find", json=body, headers=bearer("req-key"))
    assert other.status_code == 403
    assert other.json()["detail"] == "this key or token lacks 'bus:request:tasks.find'"
    assert (
        await client.post("/api/v1/requests/tasks.get", json=body, headers=bearer("proj-key"))
    ).status_code == 403
    called = await mcp(client, "req-key", "call_service", subject="tasks.get", data=body)
    assert refused(called, "503")
    assert refused(await mcp(client, "req-key", "call_service", subject="tasks.find", data=body))
    token = jwt.encode({"sub": "svc", "exp": 2**31, "scope": "bus:request:tasks.*"}, SECRET)
    by_token = await client.post("/api/v1/requests/tasks.find", json=body, headers=bearer(token))
    assert by_token.status_code == 503
    # Whether the app serves a subject is told only to callers who may call it.
    unserved = await client.post("/api/v1/requests/billing.charge", json=body,
                                 headers=bearer("req-key"))  # fmt: skip
    assert unserved.status_code == 403
    assert unserved.json()["detail"] == "this key or token lacks 'bus:request:billing.charge'"
    mine = await client.post("/api/v1/requests/tasks.unknown", json=body, headers=bearer(token))
    assert mine.status_code == 404


async def test_workflows_by_name_and_who_started_them(
    edge: tuple[httpx.AsyncClient, Bus],
) -> None:
    client, bus = edge
    wf = bearer("wf-key")
    started = await client.post("/api/v1/workflows/review/runs", json={}, headers=wf)
    assert started.status_code == 201
    run_id, seq = started.json()["run_id"], started.json()["seq"]
    got = await client.get(f"/api/v1/workflows/review/runs/{run_id}?after_seq={seq}", headers=wf)
    assert got.status_code == 200
    assert (await client.get("/api/v1/workflows/review/runs", headers=wf)).status_code == 200
    names = [d["name"] for d in (await client.get("/api/v1/workflows", headers=wf)).json()["items"]]
    assert names == ["review"]
    for answer in [
        await client.post("/api/v1/workflows/ship/runs", json={}, headers=wf),
        await client.get("/api/v1/workflows/ship/runs", headers=wf),
        await client.post("/api/v1/workflows/ship/runs/ship-x:cancel", headers=wf),
        await client.post("/api/v1/workflows/review/runs", json={}, headers=bearer("proj-key")),
    ]:
        assert answer.status_code == 403, answer.request.url
    by_mcp = await mcp(client, "wf-key", "start_workflow", name="review", input={})
    assert not by_mcp["isError"], by_mcp
    mcp_seq = int(by_mcp["content"][0]["text"].split('"seq":')[1].split("}")[0].strip())
    stored = (await bus.read("WF", mcp_seq, 1))[0]
    assert stored.headers["Bus-Principal"] == "wf-user"  # MCP records who started it, as HTTP
    assert refused(await mcp(client, "wf-key", "start_workflow", name="ship", input={}))
    assert refused(await mcp(client, "wf-key", "get_workflow_run", run_id="ship-x"))
    listed = await mcp(client, "wf-key", "list_workflows")
    assert "ship" not in listed["content"][0]["text"]
    cancelled = await client.post(f"/api/v1/workflows/review/runs/{run_id}:cancel", headers=wf)
    assert cancelled.status_code == 202


async def test_bypass_attempts_change_nothing(edge: tuple[httpx.AsyncClient, Bus]) -> None:
    client, bus = edge
    await client.put("/api/v1/kv/settings/user2.a", json=2, headers=bearer("w-key"))
    kv, wf = bearer("kv-key"), bearer("wf-key")
    keys = [
        "user1.*",
        "user1.>",
        ">",
        "*",
        "user2%2Ea",  # %2E is a dot by the time it is matched: user2.a
        "user1.a%2F..%2F..%2Fuser2.a",  # encoded slashes: another route, or no key
        "user1%2E%2A",
        "user1\uff0ea",  # FULLWIDTH FULL STOP
        "user1\u2024a",  # ONE DOT LEADER
        "user1..a",
        "user1.a." + "x" * 2000,
    ]
    for key in keys:
        for answer in (
            await client.put(f"/api/v1/kv/settings/{key}", json=9, headers=kv),
            await client.delete(f"/api/v1/kv/settings/{key}", headers=kv),
            await client.get(f"/api/v1/kv/settings/{key}", headers=kv),
        ):
            assert 400 <= answer.status_code < 500, (key, answer.status_code)
            assert answer.status_code != 200, key
        hostile = await mcp(client, "kv-key", "set_state", bucket="settings", key=key, value=9)
        assert hostile["isError"], key
    names = ["*", ">", "review.x", "review%2Ex", "rev\uff0eiew", "review%2F..%2Fship", "r" * 300]
    for name in names:
        answer = await client.post(f"/api/v1/workflows/{name}/runs", json={}, headers=wf)
        assert 400 <= answer.status_code < 500, name
        assert (await mcp(client, "wf-key", "start_workflow", name=name, input={}))["isError"]
    subjects = [
        "tasks.*",
        "tasks.>",
        "tasks%2Efind",
        "tasks\uff0eget",
        ">",
        "tasks.get." + "x" * 2000,
    ]
    for subject in subjects:
        answer = await client.post(
            f"/api/v1/requests/{subject}", json={"id": "t"}, headers=bearer("req-key")
        )
        assert 400 <= answer.status_code < 500, subject
    dead = await client.get("/api/v1/streams/TASKS/dead-letters", headers=bearer("proj-key"))
    assert dead.status_code == 403  # a permitted stream's dead letters are another stream
    assert (
        await client.get("/api/v1/streams/TASKS/dead-letters", headers=bearer("dlq-key"))
    ).status_code == 200
    for backbone in ("KV_settings", "KV_edge_rates"):
        answer = await client.get(
            f"/api/v1/streams/{backbone}/dead-letters", headers=bearer("proj-key")
        )
        assert answer.status_code in (403, 404), backbone
        consumers = await client.get(
            f"/api/v1/streams/{backbone}/consumers", headers=bearer("proj-key")
        )
        assert consumers.status_code in (403, 404), backbone
    for bucket in ("bus_idempotency", "edge_rates", "KV_settings"):
        answer = await client.get(f"/api/v1/kv/{bucket}/x", headers=bearer("w-key"))
        assert answer.status_code == 404, bucket  # the backbone's buckets are no app's
    page = await bus.bucket("settings").keys("", 100, None)
    assert {e.key: e.value for e in page.items} == {"user2.a": 2}  # nothing changed
    assert (await bus.streams.info("WF")).messages == 0  # no run was started


async def test_mcp_resources_and_completions_follow_the_same_rules(
    edge: tuple[httpx.AsyncClient, Bus],
) -> None:
    client, _ = edge
    for key, value in (("user1.a", 1), ("user2.a", 2)):
        await client.put(f"/api/v1/kv/settings/{key}", json=value, headers=bearer("w-key"))
    state_template = template("bus://state/{bucket}/{key}")
    async with client_for(client, "kv-key") as session:
        assert "1" in str(await session.read_resource("bus://state/settings/user1.a"))
        for uri in (
            "bus://state/settings/user2.a",
            "bus://streams/TASKS",
            "bus://streams/KV_settings",
        ):
            with pytest.raises(MCPError):
                await session.read_resource(uri)
        assert await values(session, state_template, "key", "user", {"bucket": "settings"}) == [
            "user1.a"
        ]
        assert await values(session, template("bus://streams/{stream}"), "stream", "") == []
    async with client_for(client, "proj-key") as session:
        await session.read_resource("bus://streams/TASKS")
        await session.read_resource("bus://projections/task")
        with pytest.raises(MCPError):
            await session.read_resource("bus://projections/workflow_runs")
        with pytest.raises(MCPError):
            await session.read_resource("bus://streams/KV_settings")
        streams = await values(session, template("bus://streams/{stream}"), "stream", "")
        assert streams == ["TASKS"]  # not its DLQ, the workflows' or the backbone's
        assert await values(session, tool("query_projection"), "name", "") == [
            "task",
            "task_counts",
        ]


async def test_a_refused_write_costs_no_rate(nats_url: str) -> None:
    """With one write a second, refusals first (403: outside the caller's patterns, over HTTP
    and MCP) leave the caller's one write for a permitted one; the next is over the rate."""
    app = make_app()
    api = create_app(app, nats_url, api_keys=KEYS, publish_rate=1)
    async with Bus(nats_url, registry=app.registry, streams=app.streams,
                   buckets=app.buckets.values()):  # fmt: skip
        async for client in serve(api):
            kv, wf = bearer("kv-key"), bearer("wf-key")
            for _ in range(3):
                for refusal in (
                    client.put("/api/v1/kv/settings/user2", json=1, headers=kv),
                    client.delete("/api/v1/kv/settings/user2", headers=kv),
                    client.post("/api/v1/workflows/ship/runs", json={}, headers=wf),
                    client.post("/api/v1/workflows/ship/runs/ship-x:cancel", headers=wf),
                ):
                    assert (await refusal).status_code == 403
                assert refused(await mcp(client, "kv-key", "set_state", bucket="settings",
                                         key="user2", value=1))  # fmt: skip
                assert refused(await mcp(client, "wf-key", "start_workflow", name="ship",
                                         input={}))  # fmt: skip
            key = "/api/v1/kv/settings/user1.a"
            assert (await client.put(key, json=1, headers=kv)).status_code == 200
            assert (await client.put(key, json=2, headers=kv)).status_code == 429
            started = await client.post("/api/v1/workflows/review/runs", json={}, headers=wf)
            assert started.status_code == 201
            again = await client.post("/api/v1/workflows/review/runs", json={}, headers=wf)
            assert again.status_code == 429
