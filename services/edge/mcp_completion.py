"""MCP argument completion (`completion/complete`): stream, projection, bucket and key names
as an agent types them.

MCP completes the arguments of resource templates and prompts; it has no reference for a
tool. So the tools' arguments complete through a `ref/prompt` naming the tool (the server has
no prompts of its own to confuse it with), from the same table as the templates'. Only names
the caller may read are offered, and the templates check as their tools do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from fastapi import HTTPException
from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, CompletionArgument, CompletionContext, PromptReference
from mcp.types import ResourceTemplateReference as TemplateReference
from starlette.datastructures import State

from . import kv, projections
from .grants import kv_name
from .mcp_access import mcp_caller
from .permissions import (
    may_read_key,
    may_read_projection,
    may_read_stream,
    permit_key,
    permit_projection,
    permit_stream,
    reaches,
)

MAX_VALUES = 100  # the most one completion may carry (MCP)
# Which names an argument takes: (state, typed prefix, the other arguments) -> candidates.
Source = Callable[[State, str, Mapping[str, str]], Awaitable[list[str]]]


async def _streams(state: State, prefix: str, _: Mapping[str, str]) -> list[str]:
    """The streams the caller may read (the backbone's: admin only)."""
    who = await mcp_caller(state, "read")
    return [s.name for s in await state.bus.streams.list() if may_read_stream(state, who, s.name)]


async def _projections(state: State, prefix: str, _: Mapping[str, str]) -> list[str]:
    who = await mcp_caller(state, "read")
    return [name for name in state.app.projections if may_read_projection(state, who, name)]


async def _buckets(state: State, prefix: str, _: Mapping[str, str]) -> list[str]:
    who = await mcp_caller(state, "read")
    return [b for b in state.app.buckets if reaches(who, ("read",), kv_name(b, ">"))]


async def _keys(state: State, prefix: str, given: Mapping[str, str]) -> list[str]:
    """Keys of the bucket or projection already chosen, read by prefix (never a scan of all)."""
    who = await mcp_caller(state, "read")
    if (bucket := given.get("bucket", "")) in state.app.buckets:
        page = await kv.bucket_of(state, bucket).keys(prefix, MAX_VALUES + 1, None)
        return [e.key for e in page.items if may_read_key(who, bucket, e.key)]
    name = given.get("projection") or given.get("name", "")
    if name not in state.app.projections or not may_read_projection(state, who, name):
        return []
    found = await projections.list_page(state, name, prefix, MAX_VALUES + 1, None)
    return [item["key"] for item in found["items"]]


# Argument -> source: a new kind of name (a workflow, say) is one line here.
SOURCES: dict[str, Source] = {
    "stream": _streams,
    "projection": _projections,
    "bucket": _buckets,
    "key": _keys,
}
# Tool arguments named otherwise than their kind: (tool, argument) -> SOURCES key.
TOOL_ARGUMENTS = {
    ("read_stream", "name"): "stream",
    ("query_projection", "name"): "projection",
    ("query_projection", "key"): "key",
    ("get_state", "bucket"): "bucket",
    ("get_state", "key"): "key",
    ("set_state", "bucket"): "bucket",
    ("set_state", "key"): "key",
}


def install(server: MCPServer[Any], state: State) -> None:
    """The completion handler and the resource templates whose arguments it completes."""
    _add_templates(server, state)

    @server.completion()  # type: ignore[no-untyped-call,untyped-decorator]  # the SDK leaves it untyped
    async def complete(
        ref: PromptReference | TemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        kind = argument.name
        if isinstance(ref, PromptReference):
            kind = TOOL_ARGUMENTS.get((ref.name, argument.name), "")
        source = SOURCES.get(kind)
        if source is None:
            return Completion(values=[])
        given = (context.arguments if context else None) or {}
        found = sorted(
            v for v in await source(state, argument.value, given) if v.startswith(argument.value)
        )
        return Completion(
            values=found[:MAX_VALUES], total=len(found), has_more=len(found) > MAX_VALUES
        )


def _add_templates(server: MCPServer[Any], state: State) -> None:
    """Any stream, any projection key and any shared-state key, by URI."""

    @server.resource("bus://streams/{stream}", name="stream", mime_type="application/json")
    async def stream(stream: str) -> str:
        await permit_stream(state, await mcp_caller(state, "read"), stream)
        return _text(await state.bus.streams.info(stream))

    @server.resource(
        "bus://projections/{projection}/{key}", name="projection key", mime_type="application/json"
    )
    async def projection_key(projection: str, key: str) -> str:
        permit_projection(state, await mcp_caller(state, "read"), projection)
        found, _ = await projections.query(state, projection, key, None, 5.0, False)
        return _text(found)

    @server.resource(
        "bus://state/{bucket}/{key}", name="shared state", mime_type="application/json"
    )
    async def state_key(bucket: str, key: str) -> str:
        handle = kv.bucket_of(state, bucket)
        permit_key(await mcp_caller(state, "read"), "read", bucket, key)
        found = await handle.get(key)
        if found is None:
            raise HTTPException(404, f"bucket {bucket!r} has no key {key!r}")
        return _text(
            {"bucket": bucket, "key": key, "revision": found.revision, "value": found.value}
        )


def _text(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value))
