"""MCP `completion/complete` (resource templates' and tools' arguments) and
`logging/setLevel`, through the official SDK client against a real edge and nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import LoggingMessageNotificationParams, PromptReference, ResourceTemplateReference

from bus import Bus
from tests.edge import READ, WRITE
from tests.test_mcp import rpc, rpc_result


@contextlib.asynccontextmanager
async def client_for(
    edge: httpx.AsyncClient, key: str = "w-key", mode: str = "legacy", **options: Any
) -> AsyncIterator[Client]:
    url = str(edge.base_url.join("/mcp"))
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, **options) as client,
    ):
        yield client


async def values(
    client: Client,
    ref: PromptReference | ResourceTemplateReference,
    name: str,
    value: str,
    given: dict[str, str] | None = None,
) -> list[str]:
    result = await client.complete(ref, {"name": name, "value": value}, given)
    return result.completion.values


def template(uri: str) -> ResourceTemplateReference:
    return ResourceTemplateReference(type="ref/resource", uri=uri)


def tool(name: str) -> PromptReference:
    return PromptReference(type="ref/prompt", name=name)


async def publish(edge: httpx.AsyncClient, task: str) -> int:
    answer = await edge.post(
        f"/api/v1/events/tasks.{task}.created", json={"title": "t"}, headers=WRITE
    )
    assert answer.status_code == 201, answer.text
    seq: int = answer.json()["seq"]
    seen = await edge.get(
        f"/api/v1/projections/task/{task}", params={"after_seq": seq}, headers=READ
    )
    assert seen.status_code == 200
    return seq


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_names_complete_for_templates_and_tools(
    edge: httpx.AsyncClient, tasks: Bus, mode: str
) -> None:
    await publish(edge, "cmp1")
    await publish(edge, "cmp2")
    await publish(edge, "other")
    async with client_for(edge, "r-key", mode) as client:
        templates = {
            t.uri_template for t in (await client.list_resource_templates()).resource_templates
        }
        assert templates == {
            "bus://streams/{stream}",
            "bus://projections/{projection}/{key}",
            "bus://state/{bucket}/{key}",
        }
        assert "TASKS" in await values(client, template("bus://streams/{stream}"), "stream", "TA")
        assert await values(client, template("bus://streams/{stream}"), "stream", "KV") == []
        projection_key = template("bus://projections/{projection}/{key}")
        assert await values(client, projection_key, "projection", "task") == ["task", "task_counts"]
        assert await values(client, projection_key, "key", "cmp", {"projection": "task"}) == [
            "cmp1",
            "cmp2",
        ]
        assert await values(client, template("bus://state/{bucket}/{key}"), "bucket", "") == [
            "settings"
        ]
        assert {"TASKS", "DLQ_TASKS"} <= set(await values(client, tool("read_stream"), "name", ""))
        assert await values(client, tool("query_projection"), "name", "task_") == ["task_counts"]
        assert await values(client, tool("query_projection"), "key", "o", {"name": "task"}) == [
            "other"
        ]
        assert await values(client, tool("set_state"), "bucket", "s") == ["settings"]
        read = await client.read_resource("bus://projections/task/cmp1")
        assert json.loads(read.contents[0].text)["state"]["title"] == "t"  # type: ignore[union-attr]


async def test_state_keys_complete_in_their_bucket(edge: httpx.AsyncClient, tasks: Bus) -> None:
    for key in ("limits.max", "limits.min", "mode"):
        put = await edge.put(f"/api/v1/kv/settings/{key}", json={"v": 1}, headers=WRITE)
        assert put.status_code in (200, 201), put.text
    async with client_for(edge, "r-key") as client:
        ref = template("bus://state/{bucket}/{key}")
        got = await values(client, ref, "key", "limits.", {"bucket": "settings"})
        assert got == ["limits.max", "limits.min"]
        read = await client.read_resource("bus://state/settings/mode")
        assert json.loads(read.contents[0].text)["value"] == {"v": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ref", "name", "value", "given"),
    [
        (template("bus://streams/{stream}"), "nope", "", None),  # no such argument
        (tool("no_such_tool"), "name", "", None),
        (tool("publish_event"), "subject", "", None),  # a free-form argument
        (template("bus://streams/{stream}"), "stream", "<img src=x onerror=alert(1)>", None),
        (template("bus://streams/{stream}"), "stream", "x" * 100_000, None),  # oversized
        (template("bus://streams/{stream}"), "stream", "\x00\r\n*>", None),
        (template("bus://projections/{projection}/{key}"), "key", "", {"projection": "nope"}),
        (template("bus://projections/{projection}/{key}"), "key", "", None),
        (template("bus://state/{bucket}/{key}"), "key", "", {"bucket": "../../etc"}),
    ],
)
async def test_hostile_or_unknown_completions_are_empty(
    edge: httpx.AsyncClient,
    tasks: Bus,
    ref: PromptReference | ResourceTemplateReference,
    name: str,
    value: str,
    given: dict[str, str] | None,
) -> None:
    async with client_for(edge, "r-key") as client:
        assert await values(client, ref, name, value, given) == []


async def test_completion_refuses_wrong_types_and_unknown_keys(
    edge: httpx.AsyncClient, tasks: Bus
) -> None:
    call = {
        "id": 1,
        "method": "completion/complete",
        "params": {"ref": {"type": "ref/resource", "uri": "bus://streams/{stream}"}},
    }
    headers = {"Mcp-Protocol-Version": "2026-07-28"}
    missing = rpc_result(await rpc(edge, call, {**READ, **headers}))
    assert missing["error"]["code"] == -32602  # no argument
    call["params"]["argument"] = {"name": "stream", "value": 5}  # type: ignore[index]
    wrong = rpc_result(await rpc(edge, call, {**READ, **headers}))
    assert wrong["error"]["code"] == -32602
    call["params"]["argument"] = {"name": "stream", "value": "T"}  # type: ignore[index]
    assert (await rpc(edge, call, headers)).status_code == 401  # no key, no names


async def test_set_level_sends_tool_calls_at_that_level_and_above(
    edge: httpx.AsyncClient, tasks: Bus
) -> None:
    received: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        received.append(params)

    async with client_for(edge, logging_callback=on_log) as client:
        assert client.server_capabilities.completions is not None
        assert client.server_capabilities.logging is not None
        await client.call_tool("list_projections", {})
        assert received == []  # nothing until the session asks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # the 2025-11-25 feature
            await client.set_logging_level("info")
        await client.call_tool("list_projections", {})
        await until(lambda: len(received) == 1)
        assert received[0].level == "info"
        assert received[0].data == {"tool": "list_projections", "ok": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.set_logging_level("warning")
        await client.call_tool("list_projections", {})
        await client.call_tool("read_stream", {"name": "NOPE"})
        await until(lambda: len(received) == 2)
        assert received[1].level == "warning"
        assert received[1].data["tool"] == "read_stream"
        assert "NOPE" in received[1].data["detail"]


async def until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("level", ["loud", 3, None, "x" * 10_000])
async def test_set_level_refuses_unknown_levels(
    edge: httpx.AsyncClient, tasks: Bus, level: Any
) -> None:
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    opened = await rpc(edge, {"id": 1, "method": "initialize", "params": init}, READ)
    session = {
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "Mcp-Protocol-Version": "2025-11-25",
    }
    await rpc(edge, {"method": "notifications/initialized"}, {**READ, **session})
    call = {"id": 2, "method": "logging/setLevel", "params": {"level": level}}
    answer = rpc_result(await rpc(edge, call, {**READ, **session}))
    assert answer["error"]["code"] == -32602


async def test_set_level_needs_a_session(edge: httpx.AsyncClient, tasks: Bus) -> None:
    call = {"id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
    answer = rpc_result(await rpc(edge, call, {**READ, "Mcp-Protocol-Version": "2026-07-28"}))
    assert "error" in answer


async def test_a_2026_request_asks_for_its_own_log_messages(
    edge: httpx.AsyncClient, tasks: Bus
) -> None:
    received: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        received.append(params)

    async with client_for(edge, "r-key", "2026-07-28", logging_callback=on_log) as quiet:
        await quiet.call_tool("read_stream", {"name": "NOPE"})
    assert received == []  # asked for nothing
    options = {"logging_callback": on_log, "log_level": "warning"}
    async with client_for(edge, "r-key", "2026-07-28", **options) as client:
        await client.call_tool("list_projections", {})  # info: below what it asked
        await client.call_tool("read_stream", {"name": "NOPE"})
        await until(lambda: len(received) == 1)
    assert received[0].level == "warning"
    assert received[0].data["tool"] == "read_stream"


@pytest.mark.parametrize(
    "uri",
    [
        "bus://streams/NOPE",
        "bus://projections/nope/k",
        "bus://projections/task/no-such-key",
        "bus://state/nope/k",
        "bus://state/settings/no-such-key",
        "bus://state/settings/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
        "bus://projections/task/" + "k" * 5000,
    ],
)
async def test_templates_refuse_unknown_or_hostile_names(
    edge: httpx.AsyncClient, tasks: Bus, uri: str
) -> None:
    async with client_for(edge, "r-key") as client:
        with pytest.raises(MCPError):
            await client.read_resource(uri)
        assert (await client.call_tool("list_projections", {})).is_error is False  # still serving
