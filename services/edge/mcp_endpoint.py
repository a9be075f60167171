"""`/mcp`: the bus for AI agents, served by the official MCP SDK over Streamable HTTP.

Both protocol generations the SDK speaks are served on the one path: 2025-11-25 with an
`initialize` handshake and sessions, and 2026-07-28 stateless requests. The legacy REST shape
that older components call (`POST /mcp/v2/tools/list`, `POST /mcp/v2/tools/call`) runs the
same tools. Every call needs an API key or token; each tool checks what its HTTP twin checks
(services/edge/mcp_access.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers, State
from starlette.types import Receive, Scope, Send

from bus import BusError, acting_as, json_schema

from . import (
    catalogue,
    events,
    health,
    kv,
    mcp_completion,
    mcp_logging,
    monitor,
    projections,
    requests,
    workflow_tools,
)
from .auth import Unauthorized, refusal, require
from .grants import KINDS
from .mcp_access import (
    CALLER,
    TOOL_CALLER,
    TOOL_SCOPES,
    check_tool,
    mcp_caller,
    mcp_gate,
    tool_caller,
    tool_writer,
)
from .permissions import may_read_stream, permit_projection, permit_publish, permit_stream

MAX_BODY = 1024 * 1024
gate = require("read", narrowed=True, kinds=KINDS)  # any scope; each tool checks its own
legacy = APIRouter(prefix="/mcp/v2/tools", tags=["mcp"], dependencies=[Depends(gate)])


class LegacyCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _guarded(state: State, tool: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The caller checked as `TOOL_SCOPES` says (KeyError: a tool with no declared scope);
    HTTP-style refusals and bus errors become tool errors the model can read."""
    if tool.__name__ not in TOOL_SCOPES:
        raise KeyError(f"MCP tool {tool.__name__} declares no scope (mcp_access.TOOL_SCOPES)")

    @functools.wraps(tool)
    async def call(**arguments: Any) -> Any:
        try:
            token = TOOL_CALLER.set(await check_tool(state, tool.__name__))
            try:
                return _builtins(await tool(**arguments))
            finally:
                TOOL_CALLER.reset(token)
        except HTTPException as exc:
            raise ToolError(f"{exc.status_code}: {exc.detail}") from None
        except Unauthorized as exc:
            raise ToolError(f"{exc.status}: {exc.detail}") from None
        except BusError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from None

    return call


def build_server(state: State) -> MCPServer[Any]:
    """The MCP server and its tools over this edge's bus and app."""
    server: MCPServer[Any] = MCPServer(
        name="bus",
        instructions="Publish events, query projections, read streams on the bus.",
        log_level="WARNING",
    )

    async def publish_event(
        subject: str,
        data: dict[str, Any],
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> Any:
        """Publish one event: subject `<domain>.<id>.<event>`, data = the event's fields.
        With an idempotency_key (the event's id), once: the same key and call within a day
        (by default) return the first result; another call with that key is refused (422),
        as is one while the first is in flight (409)."""
        permit_publish(tool_caller(), subject)
        who = await tool_writer(state)
        with acting_as(who.name):
            answer = await events.publish_fields(
                state, subject, data, idempotency_key, expected_version, "idempotency_key"
            )
        return msgspec.json.decode(answer.body)

    async def query_projection(
        name: str, key: str, after_seq: int | None = None, timeout: float = 5.0
    ) -> Any:
        """One key of a projection; with after_seq (a sequence of its stream), once the
        projection has seen it."""
        if after_seq is not None and after_seq < 1:
            raise HTTPException(422, "after_seq must be a stream sequence (>= 1)")
        if not 0 < timeout <= 30:
            raise HTTPException(422, "timeout must be more than 0 and at most 30 seconds")
        permit_projection(state, tool_caller(), name)
        found, _ = await projections.query(state, name, key, after_seq, timeout, False)
        return found

    async def list_projections() -> Any:
        """Every projection with its position, lag and failures."""
        return await projections.statuses(state, tool_caller())

    async def read_stream(name: str, from_seq: int = 1, limit: int = 100) -> Any:
        """Stored events of a stream from from_seq (at most 1000), decoded with metadata."""
        if from_seq < 1 or not 1 <= limit <= 1000:
            raise HTTPException(422, "from_seq >= 1 and 1 <= limit <= 1000")
        await permit_stream(state, tool_caller(), name)
        return await catalogue.stream_page(state.bus, name, from_seq, limit)

    async def list_streams() -> Any:
        """The streams on the server with their counts."""
        who = tool_caller()
        return [s for s in await state.bus.streams.list() if may_read_stream(state, who, s.name)]

    async def describe_event_types() -> Any:
        """JSON Schema of every registered event type and version."""
        return json_schema(state.app.registry)

    async def list_components() -> Any:
        """Components (services that heartbeat, nats.micro responders, instances whose
        heartbeat stopped), each with the edge's last health verdict (`health`)."""
        return await monitor.listing(state.bus)

    async def get_health() -> Any:
        """The edge's health report: NATS, JetStream, streams, projection lag."""
        return await health.report(state)

    for tool in (
        publish_event,
        query_projection,
        list_projections,
        read_stream,
        list_streams,
        describe_event_types,
        list_components,
        get_health,
    ):
        server.add_tool(_guarded(state, tool), structured_output=False)
    for extra in workflow_tools.tools(state) if state.app.workflows else []:
        server.add_tool(_guarded(state, extra), structured_output=False)

    async def call_service(subject: str, data: dict[str, Any], timeout: float = 5.0) -> Any:
        """Ask one of the app's responders (`list_components` shows them: kind "micro"),
        e.g. subject `tasks.get`, data `{"id": "t1"}`; returns the reply. A request may
        change things: it needs the write scope (or a request: pattern matching it)."""
        who = tool_caller()
        if not 0 < timeout <= requests.MAX_TIMEOUT:
            raise HTTPException(
                422, f"timeout must be more than 0 and at most {requests.MAX_TIMEOUT:g} s"
            )
        return msgspec.json.decode(await requests.call(state, who, subject, data, timeout))

    server.add_tool(_guarded(state, call_service), structured_output=False)
    for state_tool in kv.mcp_tools(state):  # get_state, set_state
        server.add_tool(_guarded(state, state_tool), structured_output=False)
    _add_resources(server, state)
    mcp_completion.install(server, state)

    async def each_request_key(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        """A session's tools run in the task that opened it: take the scopes (and the trace
        context) of the request that carries each message, not of the one that initialized
        the session."""
        headers = getattr(ctx.request, "headers", None)
        if headers is None:  # 2026-07-28: served inline, the gate's values are this request's
            return await call_next(ctx)
        authorization = headers.get("authorization")
        await mcp_gate(state, authorization)  # the gate let it in; a session must not change that
        token = CALLER.set(authorization)
        try:
            with state.bus.telemetry.continuing(headers):
                return await call_next(ctx)
        finally:
            CALLER.reset(token)

    server.middleware.append(each_request_key)
    return server


def _add_resources(server: MCPServer[Any], state: State) -> None:
    """Each stream and projection of the app as a JSON resource."""

    def stream(name: str) -> Callable[[], Awaitable[str]]:
        async def read() -> str:
            await permit_stream(state, await mcp_caller(state, "read"), name)
            return json.dumps(_builtins(await state.bus.streams.info(name)))

        return read

    def projection(name: str) -> Callable[[], Awaitable[str]]:
        async def read() -> str:
            permit_projection(state, await mcp_caller(state, "read"), name)
            return json.dumps(_builtins(await projections.list_page(state, name, "", 100, None)))

        return read

    for spec in state.app.streams:
        uri = f"bus://streams/{spec.name}"
        server.resource(uri, name=f"stream {spec.name}", mime_type="application/json")(
            stream(spec.name)
        )
    for name in state.app.projections:
        uri = f"bus://projections/{name}"
        server.resource(uri, name=f"projection {name}", mime_type="application/json")(
            projection(name)
        )


class Gate:
    """In front of the SDK's app: a known API key, and its scopes (and the request's trace
    context) handed to the tools."""

    def __init__(self, state: State, app: StreamableHTTPASGIApp) -> None:
        self.state, self.app = state, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        try:  # any scope; every tool checks its own
            await mcp_gate(self.state, authorization)
        except Unauthorized as exc:
            await refusal(exc)(scope, receive, send)
            return
        token = CALLER.set(authorization or "")
        try:
            with self.state.bus.telemetry.continuing(headers):
                await self.app(scope, receive, send)
        finally:
            CALLER.reset(token)


def install(api: FastAPI, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
    """Mount `/mcp` and the legacy `/mcp/v2` routes; the session manager runs in the lifespan."""
    server = build_server(api.state)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )
    server.streamable_http_app(transport_security=security, max_request_body_size=MAX_BODY)
    manager = server.session_manager  # the SDK's way to mount into another app
    mcp_logging.install(server)  # on the lowlevel server the manager runs
    api.state.mcp_manager = manager
    api.state.mcp_server = server
    gate = Gate(api.state, StreamableHTTPASGIApp(manager))
    api.add_route("/mcp", gate, methods=["GET", "POST", "DELETE"], include_in_schema=False)  # type: ignore[arg-type]
    api.include_router(legacy)


@legacy.post("/list")
async def legacy_list(request: Request) -> Response:
    """The tools with their input schemas, in the legacy REST shape."""
    server: MCPServer[Any] = request.app.state.mcp_server
    tools = [
        {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
        for t in await server.list_tools()
    ]
    return Response(msgspec.json.encode({"tools": tools}), media_type="application/json")


@legacy.post(
    "/call",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": msgspec.json.schema(LegacyCall)}},
        }
    },
)
async def legacy_call(request: Request) -> Response:
    """`{name, arguments}` → `{content: [...], isError}`, as the SDK would answer."""
    body = await events.read_body(request)
    try:
        call = msgspec.json.decode(body, type=LegacyCall)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"tool call: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    server: MCPServer[Any] = request.app.state.mcp_server
    token = CALLER.set(request.headers.get("authorization", ""))
    try:
        with request.app.state.bus.telemetry.continuing(request.headers):
            result = await server.call_tool(call.name, call.arguments)
        out = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    except ToolError as exc:
        out = {"content": [{"type": "text", "text": str(exc)}], "isError": True}
    finally:
        CALLER.reset(token)
    out.setdefault("isError", False)
    return Response(msgspec.json.encode(out), media_type="application/json")
