"""MCP log messages about tool calls (`info` when one succeeds, `warning` when it fails), at
the level the client asked for and above: a 2025-11-25 session asks with `logging/setLevel`,
a 2026-07-28 request with the `io.modelcontextprotocol/logLevel` key of its `_meta` (that
revision dropped `logging/setLevel`). A client that never asks is sent nothing. A tool's
arguments are never in the messages: they may carry values a log must not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, get_args

from mcp.server.connection import allowed_log_levels
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_REQUEST,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    SetLevelRequestParams,
)

LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # least to most severe (RFC 5424)
MAX_SESSIONS = 10_000  # levels kept; the oldest session's is forgotten past this
MAX_DETAIL = 500


class SessionLevels:
    """The level each session asked for, by `Mcp-Session-Id` (bounded: sessions end unseen)."""

    def __init__(self) -> None:
        self.levels: OrderedDict[str, int] = OrderedDict()

    def set(self, session: str, level: LoggingLevel) -> None:
        self.levels[session] = LEVELS.index(level)
        self.levels.move_to_end(session)
        while len(self.levels) > MAX_SESSIONS:
            self.levels.popitem(last=False)

    def wants(self, session: str, level: LoggingLevel) -> bool:
        wanted = self.levels.get(session)
        return wanted is not None and LEVELS.index(level) >= wanted


def _wanted(
    ctx: ServerRequestContext[Any, Any], levels: SessionLevels, level: LoggingLevel
) -> bool:
    """Whether the client asked for messages of `level`: per request (2026-07-28), or per
    session (before, where the SDK allows every level even to a request that asked nothing)."""
    if level not in allowed_log_levels(ctx.protocol_version, (ctx.params or {}).get("_meta")):
        return False
    if not allowed_log_levels(ctx.protocol_version, None):  # 2026-07-28: the request asked
        return True
    session = _session(ctx)
    return session is not None and levels.wants(session, level)


def _session(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    return None if headers is None else headers.get("mcp-session-id")


def install(server: MCPServer[Any]) -> None:
    """Serve `logging/setLevel` and report tool calls (once the server's HTTP app is built)."""
    levels = SessionLevels()

    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        session = _session(ctx)
        if session is None:
            raise MCPError(INVALID_REQUEST, "logging/setLevel needs a session (2025-11-25)")
        levels.set(session, params.level)
        return EmptyResult()

    async def report_tool_calls(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        result = await call_next(ctx)
        if ctx.method != "tools/call" or not isinstance(result, dict):  # the result, as sent
            return result
        failed = bool(result.get("isError"))
        level: LoggingLevel = "warning" if failed else "info"
        if _wanted(ctx, levels, level):
            data: dict[str, Any] = {"tool": (ctx.params or {}).get("name"), "ok": not failed}
            if failed:
                texts = (
                    c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)
                )
                data["detail"] = " ".join(texts)[:MAX_DETAIL]
            message = LoggingMessageNotificationParams(level=level, data=data, logger="bus")
            await ctx.session.send_notification(
                LoggingMessageNotification(params=message), related_request_id=ctx.request_id
            )
        return result

    # MCPServer has no setter for a method the 2026 revision dropped; the SDK points to its
    # lowlevel server's add_request_handler, which the session manager runs (so: after
    # `streamable_http_app()`).
    lowlevel = server.session_manager.app
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    server.middleware.append(report_tool_calls)
