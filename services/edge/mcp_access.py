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


async def mcp_caller(state: State, scope: str) -> Principal:
    """The caller, holding `scope` whole or some pattern of its kind (names checked next)."""
    return await admitted(state, CALLER.get(), scope)


async def mcp_writer(state: State, scope: str = "write") -> Principal:
    """The caller, as `mcp_caller`, charged one write against its publish rate."""
    who = await mcp_caller(state, scope)
    await charge(state.publish_buckets, who.name)
    return who


async def mcp_gate(state: State, authorization: str | None) -> Principal:
    """Who may speak MCP at all: a caller holding some scope (every tool checks its own)."""
    principal = await caller(state, authorization)
    if not holds_any(principal.scopes, KINDS):
        check_scope(principal.scopes, "read")
    return principal
