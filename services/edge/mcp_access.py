"""Who calls an MCP tool, resource or completion: the `Authorization` header the request
carrying the message was let in with (services/edge/mcp_endpoint.py sets it), checked as the
HTTP twin of each tool checks it (services/edge/permissions.py)."""

from __future__ import annotations

import contextvars

from starlette.datastructures import State

from .auth import caller, check_scope
from .grants import KINDS, holds_any
from .limits import charge
from .permissions import admitted
from .tokens import Principal

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("mcp_caller")
# The caller of the tool running, as `check_tool` found it (tools ask no second time).
TOOL_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("mcp_tool_caller")
# What each tool needs, as its HTTP twin does: (scope, whether patterns of the scope's kind
# let a caller in to have the names checked in the tool); `any`: any caller MCP lets in.
# `check_tool` runs it before every call; a tool missing here is not served.
TOOL_SCOPES: dict[str, tuple[str, bool]] = {
    "publish_event": ("write", True),
    "query_projection": ("read", True),
    "list_projections": ("read", True),
    "read_stream": ("read", True),
    "list_streams": ("read", True),
    "describe_event_types": ("read", True),
    "list_components": ("read", False),
    "get_health": ("any", True),  # /health is open; MCP still wants a caller
    "start_workflow": ("write", True),
    "get_workflow_run": ("read", True),
    "list_workflows": ("read", True),
    "call_service": ("request", True),
    "get_state": ("read", True),
    "set_state": ("write", True),
}


async def check_tool(state: State, name: str) -> Principal:
    """The caller of tool `name`, holding what `TOOL_SCOPES` says it needs."""
    scope, narrowed = TOOL_SCOPES[name]
    if scope == "any":
        return await mcp_gate(state, CALLER.get())
    if narrowed:
        return await mcp_caller(state, scope)
    principal = await caller(state, CALLER.get())
    check_scope(principal.scopes, scope)
    return principal


async def mcp_caller(state: State, scope: str) -> Principal:
    """The caller, holding `scope` whole or some pattern of its kind (names checked next)."""
    return await admitted(state, CALLER.get(), scope)


def tool_caller() -> Principal:
    """The caller of the tool running, checked as `TOOL_SCOPES` says (services/edge/
    mcp_endpoint.py runs `check_tool` before every tool)."""
    return TOOL_CALLER.get()


async def tool_writer(state: State) -> Principal:
    """The caller of the tool running, charged one write against its publish rate."""
    who = tool_caller()
    await charge(state.publish_buckets, who.name)
    return who


async def mcp_gate(state: State, authorization: str | None) -> Principal:
    """Who may speak MCP at all: a caller holding some scope (every tool checks its own)."""
    principal = await caller(state, authorization)
    if not holds_any(principal.scopes, KINDS):
        check_scope(principal.scopes, "read")
    return principal
