"""`/mcp` with the official MCP client (both protocol generations) and the legacy `/mcp/v2`
REST shape, under a real uvicorn against a real nats-server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bus import Bus
from tests.edge import READ, WRITE

TOOLS = {
    "publish_event",
    "query_projection",
    "list_projections",
    "read_stream",
    "list_streams",
    "describe_event_types",
    "list_components",
    "get_health",
    "call_service",
    "get_state",
    "set_state",
}


@contextlib.asynccontextmanager
async def mcp_client(edge: httpx.AsyncClient, key: str, mode: str) -> AsyncIterator[Client]:
    """The official client with its own HTTP client (which the caller must close)."""
    url = str(edge.base_url.join("/mcp"))
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def stored(bus: Bus) -> int:
    return (await bus.streams.info("TASKS")).messages


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_publishes_then_reads_its_write(
    edge: httpx.AsyncClient, tasks: Bus, mode: str
) -> None:
    async with mcp_client(edge, "w-key", mode) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        published = await client.call_tool(
            "publish_event", {"subject": "tasks.m1.created", "data": {"title": "from an agent"}}
        )
        assert not published.is_error, published.content
        seq = json.loads(published.content[0].text)["seq"]  # type: ignore[union-attr]
        found = await client.call_tool(
            "query_projection", {"name": "task", "key": "m1", "after_seq": seq}
        )
        assert not found.is_error, found.content
        state = json.loads(found.content[0].text)["state"]  # type: ignore[union-attr]
        assert state["title"] == "from an agent"
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert uris == {
            "bus://streams/TASKS",
            "bus://projections/task",
            "bus://projections/task_counts",
        }
        stream = await client.read_resource("bus://streams/TASKS")
        assert json.loads(stream.contents[0].text)["name"] == "TASKS"  # type: ignore[union-attr]
        schemas = await client.call_tool("describe_event_types", {})
        assert "tasks.{id}.created" in schemas.content[0].text  # type: ignore[union-attr]
    assert await stored(tasks) == 1


async def test_read_only_key_cannot_publish(edge: httpx.AsyncClient, tasks: Bus) -> None:
    async with mcp_client(edge, "r-key", "legacy") as client:
        refused = await client.call_tool(
            "publish_event", {"subject": "tasks.m2.created", "data": {"title": "no"}}
        )
        assert refused.is_error
        assert "403" in refused.content[0].text  # type: ignore[union-attr]
        health = await client.call_tool("get_health", {})
        assert json.loads(health.content[0].text)["status"] == "pass"  # type: ignore[union-attr]
    assert await stored(tasks) == 0


async def rpc(
    edge: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await edge.post(
        "/mcp",
        json={"jsonrpc": "2.0", **body},
        headers={"Accept": "application/json, text/event-stream", **headers},
    )


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        data = next(line[5:] for line in response.text.splitlines() if line.startswith("data:"))
        return json.loads(data)  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


async def test_a_session_keeps_each_requests_own_key(edge: httpx.AsyncClient, tasks: Bus) -> None:
    """A read-only key that learns a session id opened by a writer still cannot publish."""
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    opened = await rpc(edge, {"id": 1, "method": "initialize", "params": init}, WRITE)
    assert opened.status_code == 200
    session = {
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "Mcp-Protocol-Version": "2025-11-25",
    }
    await rpc(edge, {"method": "notifications/initialized"}, {**WRITE, **session})
    call = {
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "publish_event",
            "arguments": {"subject": "tasks.h1.created", "data": {"title": "hijack"}},
        },
    }
    result = rpc_result(await rpc(edge, call, {**READ, **session}))["result"]
    assert result["isError"] is True
    assert await stored(tasks) == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": "Basic dzp4"}, 401),
        ({**WRITE, "Host": "evil.example:80"}, 421),
        ({**WRITE, "Origin": "http://evil.example"}, 403),
    ],
)
async def test_mcp_refuses_unknown_callers_and_rebinding(
    edge: httpx.AsyncClient, tasks: Bus, headers: dict[str, str], status: int
) -> None:
    call = {
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "publish_event",
            "arguments": {"subject": "tasks.x.created", "data": {"title": "x"}},
        },
    }
    response = await rpc(edge, call, {"Mcp-Protocol-Version": "2026-07-28", **headers})
    assert response.status_code == status, response.text
    assert await stored(tasks) == 0


async def test_legacy_rest_shape(edge: httpx.AsyncClient, tasks: Bus) -> None:
    listed = await edge.post("/mcp/v2/tools/list", headers=READ)
    assert listed.status_code == 200
    tools = listed.json()["tools"]
    assert {t["name"] for t in tools} == TOOLS
    assert all(t["inputSchema"]["type"] == "object" for t in tools)

    call = {
        "name": "publish_event",
        "arguments": {"subject": "tasks.l1.created", "data": {"title": "v2"}},
    }
    published = await edge.post("/mcp/v2/tools/call", json=call, headers=WRITE)
    assert published.status_code == 200
    body = published.json()
    assert body["isError"] is False
    seq = json.loads(body["content"][0]["text"])["seq"]
    query = {
        "name": "query_projection",
        "arguments": {"name": "task", "key": "l1", "after_seq": seq},
    }
    found = (await edge.post("/mcp/v2/tools/call", json=query, headers=READ)).json()
    assert found["isError"] is False
    assert json.loads(found["content"][0]["text"])["state"]["title"] == "v2"

    refused = (await edge.post("/mcp/v2/tools/call", json=call, headers=READ)).json()
    assert refused["isError"] is True
    assert "403" in refused["content"][0]["text"]
    assert await stored(tasks) == 1


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        ({"name": "no_such_tool", "arguments": {}}, "no_such_tool"),
        ({"name": "read_stream", "arguments": {"name": "TASKS", "limit": "many"}}, "limit"),
        ({"name": "read_stream", "arguments": {"name": "TASKS", "limit": 10**6}}, "limit"),
        ({"name": "read_stream", "arguments": {"name": "NOPE"}}, "NOPE"),
        ({"name": "query_projection", "arguments": {"name": "task", "key": "none"}}, "404"),
        (
            {"name": "query_projection", "arguments": {"name": "task", "key": "k", "after_seq": 0}},
            "after_seq",
        ),
        (
            {
                "name": "query_projection",
                "arguments": {"name": "task", "key": "k", "after_seq": "x"},
            },
            "after_seq",
        ),
        (
            {
                "name": "query_projection",
                "arguments": {"name": "task", "key": "k", "after_seq": 10**9},
            },
            "BeyondStreamEnd",
        ),
        (
            {"name": "query_projection", "arguments": {"name": "task", "key": "k", "timeout": -1}},
            "timeout",
        ),
        (
            {"name": "publish_event", "arguments": {"subject": "tasks.a b.created", "data": {}}},
            "subject",
        ),
        (
            {
                "name": "publish_event",
                "arguments": {"subject": "tasks.p.created", "data": {"title": 5}},
            },
            "422",
        ),
        (
            {"name": "publish_event", "arguments": {"subject": "tasks.p.created", "data": [1]}},
            "data",
        ),
    ],
)
async def test_legacy_bad_tool_calls_are_tool_errors(
    edge: httpx.AsyncClient, tasks: Bus, call: dict[str, Any], needle: str
) -> None:
    response = await edge.post("/mcp/v2/tools/call", json=call, headers=WRITE)
    assert response.status_code == 200
    body = response.json()
    assert body["isError"] is True
    assert needle in body["content"][0]["text"]
    assert "Traceback" not in body["content"][0]["text"]
    assert await stored(tasks) == 0


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b'{"arguments": {}}', 422),
        (b'{"name": 3}', 422),
        (b'{"name": "get_health", "extra": 1}', 422),
        (b'{"name": "get_health", "arguments": {}, "pad": "' + b"x" * 70_000 + b'"}', 413),
    ],
)
async def test_legacy_malformed_bodies(
    edge: httpx.AsyncClient, content: bytes, status: int
) -> None:
    response = await edge.post("/mcp/v2/tools/call", content=content, headers=WRITE)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/mcp/v2/tools/list", "/mcp/v2/tools/call"])
@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer x"}, 401)])
async def test_legacy_needs_a_key(
    edge: httpx.AsyncClient, path: str, headers: dict[str, str], status: int
) -> None:
    response = await edge.post(path, json={"name": "get_health"}, headers=headers)
    assert response.status_code == status
