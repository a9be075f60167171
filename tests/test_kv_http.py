"""Shared state over HTTP (`/api/v1/kv/...`, the revision as ETag) and MCP (`get_state`,
`set_state`), under a real uvicorn against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from bus import App, BucketSpec, Bus
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve, sse_events
from tests.test_mcp import mcp_client

KV = "/api/v1/kv/settings"
PROBLEM = "application/problem+json"


async def put(edge: httpx.AsyncClient, key: str, value: Any, **headers: str) -> httpx.Response:
    return await edge.put(f"{KV}/{key}", json=value, headers={**WRITE, **headers})


async def value_of(edge: httpx.AsyncClient, key: str) -> tuple[int, Any, str | None]:
    got = await edge.get(f"{KV}/{key}", headers=READ)
    return got.status_code, got.json(), got.headers.get("etag")


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_get_put_and_etags(edge: httpx.AsyncClient) -> None:
    refused(await edge.get(f"{KV}/theme", headers=READ), 404)
    written = await put(edge, "theme", {"dark": True, "name": "ünï"})
    assert written.status_code == 200
    etag = written.headers["etag"]
    assert written.json() == {"bucket": "settings", "key": "theme", "revision": int(etag[1:-1])}
    assert await value_of(edge, "theme") == (200, {"dark": True, "name": "ünï"}, etag)
    same = await edge.get(f"{KV}/theme", headers={**READ, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.headers["etag"] == etag
    again = await put(edge, "theme", [1, 2])
    assert int(again.headers["etag"][1:-1]) > int(etag[1:-1])
    await put(edge, "n", 7)
    assert (await value_of(edge, "n"))[1] == 7


async def test_if_match_and_if_none_match_give_412_and_change_nothing(
    edge: httpx.AsyncClient,
) -> None:
    first = (await put(edge, "k", "one")).headers["etag"]
    second = (await put(edge, "k", "two", **{"If-Match": first})).headers["etag"]
    stale = refused(await put(edge, "k", "three", **{"If-Match": first}), 412)
    assert stale["current_revision"] == int(second[1:-1])
    assert second[1:-1] in stale["detail"]
    exists = refused(await put(edge, "k", "three", **{"If-None-Match": "*"}), 412)
    assert exists["current_revision"] == int(second[1:-1])
    stale_delete = refused(await edge.delete(f"{KV}/k", headers={**WRITE, "If-Match": first}), 412)
    assert stale_delete["current_revision"] == int(second[1:-1])
    assert await value_of(edge, "k") == (200, "two", second)

    absent = refused(await put(edge, "new", 1, **{"If-Match": "*"}), 412)
    assert absent["current_revision"] == 0
    refused(await put(edge, "new", 1, **{"If-Match": second}), 412)
    refused(await edge.delete(f"{KV}/new", headers={**WRITE, "If-Match": second}), 412)
    refused(await edge.get(f"{KV}/new", headers=READ), 404)
    created = await put(edge, "new", 1, **{"If-None-Match": "*"})
    assert created.status_code == 200
    assert (await put(edge, "new", 2, **{"If-Match": "*"})).status_code == 200

    gone = await edge.delete(f"{KV}/k", headers={**WRITE, "If-Match": second})
    assert gone.status_code == 204
    refused(await edge.get(f"{KV}/k", headers=READ), 404)
    refused(await edge.delete(f"{KV}/k", headers=WRITE), 404)
    refused(await edge.delete(f"{KV}/k", headers={**WRITE, "If-Match": "*"}), 404)
    recreated = await put(edge, "k", "back", **{"If-None-Match": "*"})  # over the deletion
    assert recreated.status_code == 200
    assert (await edge.delete(f"{KV}/k", headers=WRITE)).status_code == 204


async def test_history_and_listing(edge: httpx.AsyncClient) -> None:
    for n in range(3):
        await put(edge, "h", n)
    await edge.delete(f"{KV}/h", headers=WRITE)
    history = (await edge.get(f"{KV}/h/history", headers=READ)).json()
    assert [(e["value"], e["operation"]) for e in history["history"]] == [
        (0, "put"),
        (1, "put"),
        (2, "put"),
        (None, "delete"),
    ]
    refused(await edge.get(f"{KV}/never/history", headers=READ), 404)

    for n in range(12):
        await put(edge, f"user.{n:02}", {"n": n})
    keys: list[str] = []
    cursor = ""
    while True:
        query = f"{KV}?prefix=user.&limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = (await edge.get(query, headers=READ)).json()
        keys += [item["key"] for item in page["items"]]
        assert all(item["value"] == {"n": int(item["key"][5:])} for item in page["items"])
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert keys == [f"user.{n:02}" for n in range(12)]
    everything = (await edge.get(KV, headers=READ)).json()
    assert "h" not in [item["key"] for item in everything["items"]]  # deleted


async def read_changes(
    edge: httpx.AsyncClient, count: int, query: str = "", **headers: str
) -> list[dict[str, str]]:
    """The first `count` SSE events of the bucket's watch, then disconnect."""
    return await sse_events(edge, f"{KV}:watch{query}", count, {**READ, **headers})


async def test_watch_as_sse_in_order_and_resumable(edge: httpx.AsyncClient) -> None:
    start = int((await put(edge, "room.x", "before")).headers["etag"][1:-1])
    watching = asyncio.create_task(read_changes(edge, 10, f"?key=room.*&after_revision={start}"))
    revisions = []
    for n in range(9):
        revisions.append(int((await put(edge, f"room.{n % 2}", n)).headers["etag"][1:-1]))
        await put(edge, f"hall.{n}", n)  # not watched
    await edge.delete(f"{KV}/room.0", headers=WRITE)
    events = await watching
    assert [int(e["id"]) for e in events[:9]] == revisions
    assert [json.loads(e["data"])["value"] for e in events[:9]] == list(range(9))
    assert events[-1]["event"] == "delete"
    assert json.loads(events[-1]["data"])["key"] == "room.0"
    resumed = await read_changes(edge, 3, "?key=room.*", **{"Last-Event-ID": events[6]["id"]})
    assert [e["id"] for e in resumed] == [e["id"] for e in events[7:]]


async def test_watch_bad_requests(edge: httpx.AsyncClient) -> None:
    bad = [
        (f"{KV}:watch?key=room.>.x", READ, 400),
        (f"{KV}:watch?key=a b", READ, 400),
        (f"{KV}:watch?after_revision=-1", READ, 422),
        (f"{KV}:watch?after_revision=x", READ, 422),
        (f"{KV}:watch", {**READ, "Last-Event-ID": "x"}, 400),
        (f"{KV}:watch", {**READ, "Last-Event-ID": "9" * 20}, 400),
        (f"{KV}:watch?after_revision={2**64}", READ, 400),
        ("/api/v1/kv/nope:watch", READ, 404),
        ("/api/v1/kv/bus_components:watch", READ, 404),
        (f"{KV}:watch", {}, 401),
    ]
    for url, headers, status in bad:
        refused(await edge.get(url, headers=headers), status)


@pytest.mark.parametrize(
    "header",
    [
        {"If-Match": "12"},
        {"If-Match": '"abc"'},
        {"If-Match": '"0"'},
        {"If-Match": '"-1"'},
        {"If-Match": 'W/"1"'},
        {"If-Match": '"1", "2"'},
        {"If-Match": '""'},
        {"If-Match": '"' + "9" * 30 + '"'},
        {"If-None-Match": '"1"'},
        {"If-Match": '"1"', "If-None-Match": "*"},
    ],
)
async def test_malformed_conditions_are_400_and_change_nothing(
    edge: httpx.AsyncClient, header: dict[str, str]
) -> None:
    etag = (await put(edge, "c", "kept")).headers["etag"]
    status = 422 if any(len(v) > 24 for v in header.values()) else 400  # too long: validation
    refused(await put(edge, "c", "changed", **header), status)
    if "If-None-Match" not in header:
        refused(await edge.delete(f"{KV}/c", headers={**WRITE, **header}), status)
    assert await value_of(edge, "c") == (200, "kept", etag)


async def test_bad_buckets_keys_bodies_and_scopes(edge: httpx.AsyncClient, tasks: Bus) -> None:
    etag = (await put(edge, "safe", {"v": 1})).headers["etag"]
    for bucket in ("nope", "bus_idempotency", "bus_components", "bus_leases", "proj_task_1"):
        refused(await edge.get(f"/api/v1/kv/{bucket}/safe", headers=READ), 404)
        refused(await edge.get(f"/api/v1/kv/{bucket}", headers=READ), 404)
        refused(await edge.put(f"/api/v1/kv/{bucket}/safe", json=1, headers=WRITE), 404)
        refused(await edge.delete(f"/api/v1/kv/{bucket}/safe", headers=WRITE), 404)
        refused(await edge.get(f"/api/v1/kv/{bucket}/safe/history", headers=READ), 404)
    for key in ("a..b", ".a", "a.", "a%20b", "%C3%BC", "a*", "a>", "a%0D%0Ab", "%00", "x" * 300):
        refused(await edge.get(f"{KV}/{key}", headers=READ), 400)
        refused(await put(edge, key, 1), 400)
        refused(await edge.delete(f"{KV}/{key}", headers=WRITE), 400)
    for query in ("?limit=0", "?limit=1001", "?limit=x", "?prefix=a%20b", "?cursor=a..b"):
        refused(await edge.get(f"{KV}{query}", headers=READ), 422 if "limit" in query else 400)
    for body in (b"{not json", b"", b'{"a": 1', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        refused(await edge.put(f"{KV}/safe", content=body, headers=WRITE), 400)
    refused(await edge.put(f"{KV}/safe", content=b"[" + b"1," * 40_000 + b"1]", headers=WRITE), 413)
    refused(await edge.put(f"{KV}/safe", json=1, headers=READ), 403)
    refused(await edge.delete(f"{KV}/safe", headers=READ), 403)
    refused(await edge.put(f"{KV}/safe", json=1), 401)
    refused(await edge.get(f"{KV}/safe"), 401)
    refused(await edge.get(f"{KV}/safe", headers={"Authorization": "Bearer wrong"}), 401)
    assert await value_of(edge, "safe") == (200, {"v": 1}, etag)
    kv = await tasks.streams.info("KV_settings")
    assert kv.messages == 1  # nothing else was written


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    rate: int
    burst: int = 0


@pytest.fixture
async def typed(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An edge whose app declares a bucket of typed values."""
    shop = App("shop", buckets=[BucketSpec("limits", value_type=Limits)])
    async for client in serve(create_app(shop, nats_url, api_keys=KEYS)):
        yield client


async def test_wrong_typed_values_are_422(typed: httpx.AsyncClient) -> None:
    url = "/api/v1/kv/limits/api"
    assert (await typed.put(url, json={"rate": 5}, headers=WRITE)).status_code == 200
    for body in (b'{"rate": "fast"}', b'{"rate": 1, "extra": 2}', b"[1]", b'"x"', b"null", b"{}"):
        refused(await typed.put(url, content=body, headers=WRITE), 422)
    assert (await typed.get(url, headers=READ)).json() == {"rate": 5, "burst": 0}
    refused(await typed.get("/api/v1/kv/settings/api", headers=READ), 404)  # not this app's


async def test_openapi_documents_the_routes_and_their_412(edge: httpx.AsyncClient) -> None:
    paths = (await edge.get("/openapi.json")).json()["paths"]
    item = paths["/api/v1/kv/{bucket}/{key}"]
    assert {"get", "put", "delete"} <= set(item)
    assert "412" in item["put"]["responses"]
    assert "412" in item["delete"]["responses"]
    assert "/api/v1/kv/{bucket}:watch" in paths
    assert "/api/v1/kv/{bucket}/{key}/history" in paths


async def call(edge: httpx.AsyncClient, auth: dict[str, str], name: str, **arguments: Any) -> Any:
    response = await edge.post(
        "/mcp/v2/tools/call", json={"name": name, "arguments": arguments}, headers=auth
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_mcp_get_state_and_set_state(edge: httpx.AsyncClient) -> None:
    set_ = await call(edge, WRITE, "set_state", bucket="settings", key="mode", value={"a": 1})
    assert not set_["isError"], set_
    revision = json.loads(set_["content"][0]["text"])["revision"]
    got = await call(edge, READ, "get_state", bucket="settings", key="mode")
    assert json.loads(got["content"][0]["text"]) == {
        "bucket": "settings",
        "key": "mode",
        "revision": revision,
        "value": {"a": 1},
    }
    again = await call(edge, WRITE, "set_state", bucket="settings", key="mode", value={"a": 2})
    first, revision = revision, json.loads(again["content"][0]["text"])["revision"]
    stale = await call(
        edge, WRITE, "set_state", bucket="settings", key="mode", value=2, expected_revision=first
    )
    assert stale["isError"]
    assert "412" in stale["content"][0]["text"]
    assert f"current revision {revision}" in stale["content"][0]["text"]
    exists = await call(
        edge, WRITE, "set_state", bucket="settings", key="mode", value=2, expected_revision=0
    )
    assert exists["isError"]
    newer = await call(
        edge,
        WRITE,
        "set_state",
        bucket="settings",
        key="mode",
        value=3,
        expected_revision=revision,
    )
    assert not newer["isError"], newer
    created = await call(
        edge, WRITE, "set_state", bucket="settings", key="fresh", value=0, expected_revision=0
    )
    assert not created["isError"], created
    assert (await value_of(edge, "mode"))[1] == 3


async def test_mcp_state_tools_refuse_bad_input(edge: httpx.AsyncClient) -> None:
    await put(edge, "kept", "v")
    bad: list[tuple[dict[str, str], str, dict[str, Any], str]] = [
        (READ, "set_state", {"bucket": "settings", "key": "kept", "value": 1}, "403"),
        (WRITE, "set_state", {"bucket": "bus_components", "key": "k", "value": 1}, "404"),
        (WRITE, "set_state", {"bucket": "settings", "key": "a b", "value": 1}, "InvalidSubject"),
        (
            WRITE,
            "set_state",
            {"bucket": "settings", "key": "kept", "value": 1, "expected_revision": -1},
            "422",
        ),
        (
            WRITE,
            "set_state",
            {"bucket": "settings", "key": "kept", "value": 1, "expected_revision": "x"},
            "",
        ),
        (READ, "get_state", {"bucket": "settings", "key": "absent"}, "404"),
        (READ, "get_state", {"bucket": "nope", "key": "kept"}, "404"),
        (READ, "get_state", {"bucket": "settings", "key": "a..b"}, "InvalidSubject"),
    ]
    for auth, tool, arguments, says in bad:
        result = await call(edge, auth, tool, **arguments)
        assert result["isError"], (tool, arguments)
        assert says in result["content"][0]["text"]
    assert (await value_of(edge, "kept"))[1] == "v"


async def test_mcp_sdk_client_sees_the_state_tools(edge: httpx.AsyncClient) -> None:
    async with mcp_client(edge, "w-key", "2026-07-28") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"get_state", "set_state"} <= names
        done = await client.call_tool(
            "set_state", {"bucket": "settings", "key": "sdk", "value": [1], "expected_revision": 0}
        )
        assert not done.is_error, done.content
        got = await client.call_tool("get_state", {"bucket": "settings", "key": "sdk"})
        assert json.loads(got.content[0].text)["value"] == [1]  # type: ignore[union-attr]


async def test_writes_and_conflicts_are_counted(edge: httpx.AsyncClient) -> None:
    """KV writes are publishes: counted by destination (the bucket's stream) and outcome, a
    lost compare-and-set as a ConcurrencyError (labels stay bounded: no key in them)."""
    etag = (await put(edge, "m", 1)).headers["etag"]
    await put(edge, "m", 2)
    refused(await put(edge, "m", 3, **{"If-Match": etag}), 412)
    text = (await edge.get("/metrics")).text
    sent = [line for line in text.splitlines() if line.startswith("messaging_client_sent")]
    assert any('_name="KV_settings"' in s and 'outcome="ok"' in s for s in sent), sent
    assert any('outcome="ConcurrencyError"' in s for s in sent), sent
    assert not any('"m"' in s for s in sent)
