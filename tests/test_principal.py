"""The principal on every write: events published over HTTP and MCP carry who published them
(`Bus-Principal`: an API key's name or a token's `sub`), shown by the stream API, the tails,
MCP reads and `bus tail`; a client cannot forge it. Real uvicorn, real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from bus import Bus, ConfigError, acting_as
from services.cli.main import show_message
from services.demo import TaskCreated, app
from services.edge import create_app
from services.edge.auth import parse_keys
from services.edge.tokens import Tokens
from tests.edge import serve

SECRET = "a-shared-secret-of-enough-length-000"
KEYS = "w-key:read+write@writer,r-key:read,plain-key:read+write"
FORGE = {"Bus-Principal": "root"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **FORGE}


@pytest.fixture
async def edge(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app, nats_url, api_keys=KEYS, tokens=Tokens(secret=SECRET))
    async for client in serve(api):
        yield client


async def principals(edge: httpx.AsyncClient) -> list[str | None]:
    page = await edge.get("/api/v1/streams/TASKS/events", headers=bearer("r-key"))
    return [item["principal"] for item in page.json()["items"]]


async def test_every_write_carries_its_principal(edge: httpx.AsyncClient, tasks: Bus) -> None:
    one = {"title": "x"}
    token = jwt.encode({"sub": "svc-billing", "exp": 2**31, "scope": "bus:read bus:write"}, SECRET)
    for auth in ("w-key", "plain-key", token):
        answer = await edge.post("/api/v1/events/tasks.p1.created", json=one, headers=bearer(auth))
        assert answer.status_code == 201, answer.text
    batch = {"domain": "tasks", "id": "p2", "events": [{"event": "created", "data": one}] * 2}
    assert (
        await edge.post("/api/v1/events:batch", json=batch, headers=bearer("w-key"))
    ).status_code == 201
    called = await edge.post(
        "/mcp/v2/tools/call",
        json={"name": "publish_event", "arguments": {"subject": "tasks.p3.created", "data": one}},
        headers=bearer(token),
    )
    assert called.json()["isError"] is False
    await tasks.publish(TaskCreated(title="from a service"), "p4")  # not through the edge
    plain = parse_keys(KEYS)["plain-key"].name
    assert plain.startswith("key-")
    assert "plain-key" not in plain  # a key without a name is named by a digest of it
    assert await principals(edge) == [
        "writer",
        plain,
        "svc-billing",
        "writer",
        "writer",
        "svc-billing",
        None,
    ]
    read = await edge.post(
        "/mcp/v2/tools/call",
        json={"name": "read_stream", "arguments": {"name": "TASKS"}},
        headers=bearer("r-key"),
    )
    items = json.loads(read.json()["content"][0]["text"])["items"]
    assert items[0]["principal"] == "writer"


async def test_the_tails_show_it(edge: httpx.AsyncClient, tasks: Bus) -> None:
    await edge.post("/api/v1/events/tasks.t1.created", json={"title": "x"}, headers=bearer("w-key"))
    url = str(edge.base_url.copy_with(scheme="ws").join("/ws?subject=tasks.>&from_seq=1"))
    async with connect(url, additional_headers={"Authorization": "Bearer r-key"}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["principal"] == "writer"
    async with edge.stream(
        "GET", "/events?subject=tasks.>&from_seq=1", headers=bearer("r-key")
    ) as sse:
        async for line in sse.aiter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["principal"] == "writer"
                break


async def test_bus_tail_shows_it(tasks: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    with acting_as("[bold]mallory"):
        await tasks.publish(TaskCreated(title="x"), "c1")
    (stored,) = await tasks.read("TASKS", 1, 1)
    show_message(tasks, stored, as_json=True)
    assert json.loads(capsys.readouterr().out)["principal"] == "[bold]mallory"
    show_message(tasks, stored, as_json=False)
    assert "by [bold]mallory" in capsys.readouterr().out  # markup shown, not obeyed


def test_key_names_are_checked() -> None:
    assert parse_keys("k:read@ops-1")["k"].name == "ops-1"
    assert parse_keys("k:read")["k"].scopes == {"read"}  # today's syntax still valid
    for bad in ("k:read@", "k:read@has space", "k:read@" + "n" * 65, "k:read@a\nb"):
        with pytest.raises(ConfigError):
            parse_keys(bad)
