"""Per-subject permissions: keys and tokens limited to `publish:` / `read:` patterns, and the
backbone's streams for admin only; bypass attempts (wildcards, `%2E`, look-alike dots,
overlong names, a permitted stream's DLQ) are refused and store nothing. Real uvicorn, real
nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bus import Bus, ConfigError
from services.demo import app
from services.edge import create_app
from services.edge.auth import parse_keys
from services.edge.tokens import Tokens
from tests.edge import bearer, serve

SECRET = "permissions-test-secret-0123456789abc"
KEYS = ",".join(
    [
        "pub-key:read+publish:tasks.p1.*",
        "tail-key:read:tasks.>",
        "r-key:read",
        "w-key:read+write",
        "admin-key:admin",
    ]
)


@pytest.fixture
async def edge(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app, nats_url, api_keys=KEYS, tokens=Tokens(secret=SECRET))
    async for client in serve(api):
        yield client


async def stored(bus: Bus) -> int:
    return (await bus.streams.info("TASKS")).messages


async def test_publishing_is_held_to_the_patterns(edge: httpx.AsyncClient, tasks: Bus) -> None:
    body = {"title": "x"}
    ok = await edge.post("/api/v1/events/tasks.p1.created", json=body, headers=bearer("pub-key"))
    assert ok.status_code == 201
    refused = await edge.post(
        "/api/v1/events/tasks.p2.created", json=body, headers=bearer("pub-key")
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this key or token lacks 'bus:publish:tasks.p2.created'"
    attempts = [
        "tasks%2Ep2%2Ecreated",  # decoded before it is matched: tasks.p2.created
        "tasks.p1.%3E",  # a wildcard
        "tasks.p1.*",
        "tasks.*.created",
        "tasks.p1\u2024created",  # ONE DOT LEADER
        "tasks.p1\uff0ecreated",  # FULLWIDTH FULL STOP
        "tasks.p1.created." + "x" * 2000,  # overlong
        "tasks.p1",
        "tasks.p1..created",
    ]
    for subject in attempts:
        answer = await edge.post(f"/api/v1/events/{subject}", json=body, headers=bearer("pub-key"))
        assert 400 <= answer.status_code < 500, subject
        assert answer.status_code != 404 or "no event type" not in answer.text, subject
    batch = {"domain": "tasks", "id": "p2", "events": [{"event": "created", "data": body}]}
    assert (
        await edge.post("/api/v1/events:batch", json=batch, headers=bearer("pub-key"))
    ).status_code == 403
    sneaky = {"domain": "tasks", "id": "p1", "events": [{"event": "*", "data": body}]}
    assert (
        await edge.post("/api/v1/events:batch", json=sneaky, headers=bearer("pub-key"))
    ).status_code in (400, 422)
    called = await edge.post(
        "/mcp/v2/tools/call",
        json={"name": "publish_event", "arguments": {"subject": "tasks.p2.created", "data": body}},
        headers=bearer("pub-key"),
    )
    assert called.json()["isError"] is True
    assert "403" in called.json()["content"][0]["text"]
    token = jwt.encode(
        {"sub": "svc", "exp": 2**31, "scope": "bus:read bus:publish:tasks.p1.*"}, SECRET
    )
    by_token = await edge.post("/api/v1/events/tasks.p2.created", json=body, headers=bearer(token))
    assert by_token.status_code == 403
    assert await stored(tasks) == 1  # the one permitted event, nothing else
    # a publish-only caller is refused where a plain write is needed
    assert (
        await edge.put("/api/v1/kv/settings/k", json=1, headers=bearer("pub-key"))
    ).status_code in (
        403,
        404,
    )


async def test_reading_is_held_to_the_patterns(edge: httpx.AsyncClient, tasks: Bus) -> None:
    await edge.post("/api/v1/events/tasks.r1.created", json={"title": "x"}, headers=bearer("w-key"))
    reader = bearer("tail-key")
    assert (await edge.get("/api/v1/streams/TASKS/events", headers=reader)).status_code == 200
    assert [s["name"] for s in (await edge.get("/api/v1/streams", headers=reader)).json()] == [
        "TASKS"
    ]
    dlq = await edge.get("/api/v1/streams/DLQ_TASKS/events", headers=reader)
    assert dlq.status_code == 403  # a permitted stream's dead letters are not permitted
    async with edge.stream("GET", "/events?subject=tasks.r1.*", headers=reader) as sse:
        assert sse.status_code == 200
    for subject in ("dlq.TASKS.>", ">", "tasks.>.x", "$KV.>"):
        async with edge.stream("GET", f"/events?subject={subject}", headers=reader) as sse:
            assert 400 <= sse.status_code < 500, subject
    url = str(edge.base_url.copy_with(scheme="ws")).rstrip("/") + "/"
    async with connect(f"{url}ws?subject=tasks.>&from_seq=1", additional_headers=reader) as ws:
        assert ws.response.status_code == 101
    with pytest.raises(InvalidStatus):
        async with connect(f"{url}ws?subject=dlq.TASKS.>", additional_headers=reader):
            pass
    # the projections its patterns cover (tests/test_permission_surfaces.py has the rest);
    # the registry needs the plain scope, a bucket it holds no pattern of is refused
    listed = (await edge.get("/api/v1/projections", headers=reader)).json()
    assert {p["name"] for p in listed} == {"task", "task_counts"}
    for path in ("/api/v1/components", "/api/v1/components/x", "/api/v1/kv/settings"):
        assert (await edge.get(path, headers=reader)).status_code == 403, path
    assert (await edge.post("/mcp/v2/tools/list", headers=reader)).status_code == 200


async def test_the_backbone_streams_are_for_admin(edge: httpx.AsyncClient, tasks: Bus) -> None:
    await edge.post("/api/v1/events/tasks.b1.created", json={"title": "x"}, headers=bearer("w-key"))
    everything = [s.name for s in await tasks.streams.list()]
    backbone = [n for n in everything if n.startswith("KV_")]
    assert backbone  # the edge's own buckets at least
    listed = [
        s["name"] for s in (await edge.get("/api/v1/streams", headers=bearer("r-key"))).json()
    ]
    assert not set(listed) & set(backbone)
    for name in backbone:
        for path in (f"/api/v1/streams/{name}", f"/api/v1/streams/{name}/events"):
            assert (await edge.get(path, headers=bearer("r-key"))).status_code == 403, path
            assert (await edge.get(path, headers=bearer("admin-key"))).status_code == 200, path
    async with edge.stream("GET", "/events?subject=$KV.>", headers=bearer("r-key")) as sse:
        assert sse.status_code in (400, 403)  # no tail reaches a bucket
    assert (await edge.get("/api/v1/streams/NOPE", headers=bearer("r-key"))).status_code == 404
    called = await edge.post(
        "/mcp/v2/tools/call",
        json={"name": "read_stream", "arguments": {"name": backbone[0]}},
        headers=bearer("r-key"),
    )
    assert called.json()["isError"] is True
    listed_by_mcp = await edge.post(
        "/mcp/v2/tools/call",
        json={"name": "list_streams", "arguments": {}},
        headers=bearer("r-key"),
    )
    assert "KV_" not in listed_by_mcp.text


def test_key_syntax() -> None:
    scopes = parse_keys("k:read+publish:tasks.>+read:orders.*.created@svc")["k"].scopes
    assert scopes == {"read", "publish:tasks.>", "read:orders.*.created"}
    for bad in ("k:publish:", "k:publish:a..b", "k:delete:x", "k:read:tasks.>.x", "k:read: "):
        with pytest.raises(ConfigError):
            parse_keys(bad)
