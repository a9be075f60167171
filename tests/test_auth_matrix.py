"""The auth matrix for every route and every MCP tool, enumerated from the app at run time
(`app.routes`, the MCP server's tool list): a route that joins the edge is covered as it is,
and one that declares no scope (a `require` dependency, `auth.SELF_CHECKED` or `auth.OPEN`;
for tools `mcp_access.TOOL_SCOPES`) fails here. For each: no credential, forged JWTs, a
token missing the scope and one whose patterns lie outside the names asked for answer 401
or 403 (a listing: 200 showing none of them); the right credential is let in. One edge on one
nats-server serves the module."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bus import Bus, EmbeddedServer, Projector
from services.edge import create_app
from services.edge.auth import OPEN, SELF_CHECKED, require
from services.edge.mcp_access import TOOL_SCOPES
from services.edge.openapi import _flat
from services.edge.tokens import Tokens
from tests.access_app import make_app
from tests.edge import bearer, serve
from tests.test_tokens import AUDIENCE, FORGED, ISSUER, PUBLIC_PEM, mint

in_module_loop = pytest.mark.asyncio(loop_scope="module")
KEYS = "w-key:read+write,r-key:read"
OUTSIDE = "bus:read:orders.> bus:publish:orders.> bus:request:orders.>"  # none of the samples
INSIDE = "bus:read:> bus:publish:> bus:request:>"  # every sample (not the backbone's)
FORGERIES = [
    "alg none",
    "HS256 with the public key",
    "wrong key",
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
]
# Path parameters as the routes take them: (path, parameter) first, then by parameter.
SAMPLES: dict[tuple[str, str] | str, str] = {
    ("/api/v1/events/{subject}", "subject"): "tasks.m1.created",
    ("/api/v1/requests/{subject}", "subject"): "tasks.get",
    ("/api/v1/workflows/{name}/runs", "name"): "review",
    ("/api/v1/workflows/{name}/runs/{run_id}", "name"): "review",
    ("/api/v1/workflows/{name}/runs/{run_id}:cancel", "name"): "review",
    ("/api/v1/components/{name}", "name"): "edge-access",
    ("/api/v1/kv/{bucket}/{key}", "key"): "user1.a",
    ("/api/v1/kv/{bucket}/{key}/history", "key"): "user1.a",
    "name": "TASKS",  # streams
    "bucket": "settings",
    "seq": "1",
    "event_id": "0193f6f0-0000-7000-8000-000000000000",
    "run_id": "review-x",
    "key": "m1",  # a projection's
}
PROJECTION_PATHS = re.compile(r"^/api/v1/projections/\{name\}")
BODIES: dict[str, Any] = {
    "/api/v1/events/{subject}": {"title": "x"},
    "/api/v1/events:batch": {
        "domain": "tasks",
        "id": "m2",
        "events": [{"event": "created", "data": {"title": "x"}}],
    },
    "/api/v1/kv/{bucket}/{key}": 1,
    "/api/v1/requests/{subject}": {"id": "m1"},
    "/api/v1/workflows/{name}/runs": {},
    "/mcp/v2/tools/call": {"name": "list_streams", "arguments": {}},
    "/mcp": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
}
LISTINGS = {  # what a caller whose patterns reach none of it sees: nothing (200)
    "/api/v1/projections": "task",
    "/api/v1/kv": "settings",
    "/api/v1/workflows": "review",
    "/api/v1/workflows/counts": "review",
    "/api/v1/streams": "TASKS",
    "/api/v1/schemas": "",  # the API's contract: shown to every reader
}
TOOL_ARGUMENTS: dict[str, dict[str, Any]] = {
    "publish_event": {"subject": "tasks.m3.created", "data": {"title": "x"}},
    "query_projection": {"name": "task", "key": "m1"},
    "list_projections": {},
    "read_stream": {"name": "TASKS"},
    "list_streams": {},
    "describe_event_types": {},
    "list_components": {},
    "get_health": {},
    "start_workflow": {"name": "review", "input": {}},
    "get_workflow_run": {"run_id": "review-x"},
    "list_workflows": {},
    "call_service": {"subject": "tasks.get", "data": {"id": "m1"}, "timeout": 0.2},
    "get_state": {"bucket": "settings", "key": "user1.a"},
    "set_state": {"bucket": "settings", "key": "user1.a", "value": 2},
}
TOOL_LISTINGS = {
    "list_projections": "task",
    "list_streams": "TASKS",
    "list_workflows": "review",
    "describe_event_types": "",
}


@dataclass(frozen=True)
class Case:
    path: str
    method: str
    scope: str  # read, write, any
    narrowed: bool  # patterns let a caller in; the route checks the names

    @property
    def url(self) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "name" and PROJECTION_PATHS.match(self.path):
                return "task"
            found = SAMPLES.get((self.path, name), SAMPLES.get(name))
            assert found is not None, f"{self.path}: add a sample for {{{name}}} to SAMPLES"
            return found

        return re.sub(r"\{(\w+)\}", value, self.path)


def declared(api: Any) -> tuple[list[Case], list[str]]:
    """Every route's cases, and the routes that declare no scope."""
    cases, undeclared = [], []
    for route in _flat(api.routes):
        original = getattr(route, "original_route", route)
        path = route.path if isinstance(original, Mount) else route.path_format
        if path in OPEN:
            continue
        methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
        checks = [d.dependency for d in getattr(route, "dependencies", [])]
        guards = [c for c in checks if isinstance(c, require)]
        if guards:
            plain = [g for g in guards if not g.narrowed]
            scope, narrowed = guards[0].scope, not plain
        elif path in SELF_CHECKED:
            scope, narrowed = SELF_CHECKED[path], True
        else:
            undeclared.append(path)
            continue
        cases += [Case(path, method, scope, narrowed) for method in methods]
    return cases, undeclared


async def _tool_names(api: Any) -> list[str]:
    return [tool.name for tool in await api.state.mcp_server.list_tools()]


SHAPE = create_app(make_app(), "nats://127.0.0.1:1", api_keys=KEYS)  # enumerated, never served
CASES, UNDECLARED = declared(SHAPE)
TOOLS = asyncio.run(_tool_names(SHAPE))


@dataclass
class Served:
    client: httpx.AsyncClient
    bus: Bus


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with EmbeddedServer(store_dir=tmp_path_factory.mktemp("matrix") / "nats") as running:
        yield running


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix-keys") / "public.pem"
    path.write_bytes(PUBLIC_PEM)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(server: EmbeddedServer, pem: Path) -> AsyncIterator[Served]:
    app = make_app()
    tokens = Tokens(public_key=pem, issuer=ISSUER, audience=AUDIENCE)
    api = create_app(app, server.url, api_keys=KEYS, tokens=tokens, health_interval=0)
    buckets = app.buckets.values()
    async with (
        Bus(server.url, registry=app.registry, streams=app.streams, buckets=buckets) as bus,
        Projector(bus, app.projections.values()),
    ):
        async for client in serve(api):
            yield Served(client, bus)


def token(scope: str) -> dict[str, str]:
    return bearer(mint(scope=scope))


async def send(served: Served, case: Case, headers: dict[str, str]) -> tuple[int, bytes]:
    """The status (and body, unless it is an event stream) answering `case`."""
    if case.path == "/ws":
        url = str(served.client.base_url.copy_with(scheme="ws").join("/ws?subject=tasks.>"))
        try:
            async with connect(url, additional_headers=headers):
                return 101, b""
        except InvalidStatus as exc:
            return exc.response.status_code, b""
    query = {"subject": "tasks.>"} if case.path == "/events" else {}
    body = BODIES.get(case.path) if case.method in ("POST", "PUT") else None
    extra = {"Accept": "application/json, text/event-stream"} if case.path == "/mcp" else {}
    async with served.client.stream(
        case.method, case.url, params=query, json=body, headers=headers | extra
    ) as answer:
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return answer.status_code, b""
        return answer.status_code, await answer.aread()


def test_every_route_and_tool_declares_who_may_call_it() -> None:
    assert not UNDECLARED, f"routes with no declared scope: {UNDECLARED}"
    assert len(CASES) > 40
    assert set(TOOLS) <= set(TOOL_SCOPES), "tools with no declared scope"
    assert set(TOOLS) == set(TOOL_ARGUMENTS), "every tool needs sample arguments here"


@in_module_loop
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
async def test_route(edge: Served, case: Case) -> None:
    assert (await send(edge, case, {}))[0] == 401, "no credential"
    assert (await send(edge, case, bearer("nope")))[0] == 401, "an unknown API key"
    for name in FORGERIES:
        status = (await send(edge, case, bearer(FORGED[name])))[0]
        assert status == 401, name
    if case.scope != "any":
        assert (await send(edge, case, token("openid")))[0] == 403, "no bus scope"
        other = "bus:write" if case.scope == "read" else "bus:read"
        if case.path not in ("/mcp", "/mcp/v2/tools/list", "/mcp/v2/tools/call"):
            assert (await send(edge, case, token(other)))[0] == 403, "the other scope"
        status, body = await send(edge, case, token(OUTSIDE))
        if case.path in LISTINGS:
            assert status == 200, "a listing"
            assert not LISTINGS[case.path] or LISTINGS[case.path].encode() not in body
        elif case.path.startswith("/mcp"):  # let in: each tool checks (test_tool, below)
            assert status not in (401, 403)
        else:
            assert status == 403, "patterns outside what it asks for"
    wanted = {"read": "bus:read", "write": "bus:write", "any": "openid"}[case.scope]
    status, body = await send(edge, case, token(wanted))
    assert status not in (401, 403), (status, body[:200])
    if case.narrowed:
        status, body = await send(edge, case, token(INSIDE))
        assert status not in (401, 403), ("patterns covering it", status, body[:200])


async def call(edge: Served, tool: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    answer = await edge.client.post(
        "/mcp/v2/tools/call",
        json={"name": tool, "arguments": TOOL_ARGUMENTS[tool]},
        headers=headers,
    )
    return answer.status_code, answer.json()


def refused_with(result: dict[str, Any]) -> str | None:
    """The HTTP-style status a tool error names (`...: 403: ...`), if any."""
    if not result.get("isError"):
        return None
    found = re.search(r": (\d{3}): ", result["content"][0]["text"])
    return found.group(1) if found else "error"


@in_module_loop
@pytest.mark.parametrize("tool", TOOLS)
async def test_tool(edge: Served, tool: str) -> None:
    scope, narrowed = TOOL_SCOPES[tool]
    assert (await call(edge, tool, {}))[0] == 401
    for name in FORGERIES:
        assert (await call(edge, tool, bearer(FORGED[name])))[0] == 401, name
    if scope != "any":
        assert (await call(edge, tool, token("openid")))[0] == 403  # the gate: no bus scope
        other = {"read": "bus:write", "write": "bus:read", "request": "bus:read"}[scope]
        assert refused_with((await call(edge, tool, token(other)))[1]) == "403", "other scope"
        status, result = await call(edge, tool, token(OUTSIDE))
        assert status == 200
        if tool in TOOL_LISTINGS:
            assert refused_with(result) is None
            assert not TOOL_LISTINGS[tool] or TOOL_LISTINGS[tool] not in str(result["content"])
        else:
            assert refused_with(result) == "403", result
    wanted = {"read": "bus:read", "write": "bus:write", "request": "bus:write", "any": OUTSIDE}
    status, result = await call(edge, tool, token(wanted[scope]))
    assert status == 200
    assert refused_with(result) not in ("401", "403"), result
    if narrowed and scope != "any":
        status, result = await call(edge, tool, token(INSIDE))
        assert refused_with(result) not in ("401", "403"), result
