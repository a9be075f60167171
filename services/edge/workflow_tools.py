"""The MCP tools for workflows: start a run, read one, list the definitions (as HTTP does,
with the same checks: `$WF.<name>`, services/edge/grants.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import HTTPException
from starlette.datastructures import State

from bus import acting_as

from . import workflows
from .mcp_access import tool_caller
from .permissions import permit_workflow


def tools(state: State) -> list[Callable[..., Awaitable[Any]]]:
    """The tools over this edge's app."""

    async def start_workflow(
        name: str, input: dict[str, Any], idempotency_key: str | None = None
    ) -> Any:
        """Start a run of workflow `name` with `input` (checked against its input schema,
        see list_workflows). Returns {run_id, workflow, status, stream, seq}; pass seq as
        after_seq to get_workflow_run to read it back. With an idempotency_key, once."""
        who = tool_caller()  # (charged by `start`, once the workflow is permitted)
        with acting_as(who.name):  # the run's events say who started it, as over HTTP
            answer = await workflows.start(
                state, who, name, input, idempotency_key, "idempotency_key"
            )
        return msgspec.json.decode(answer.body)

    async def get_workflow_run(run_id: str, after_seq: int | None = None) -> Any:
        """A run: status running|completed|failed|cancelled, input, output, error, and each
        step's status, attempts, output, error and times. With after_seq, once the run view
        has seen that sequence."""
        who = tool_caller()
        if after_seq is not None and after_seq < 1:
            raise HTTPException(422, "after_seq must be a stream sequence (>= 1)")
        name = run_id.partition("-")[0]
        runs = workflows.known(state, name)
        permit_workflow(who, "read", name)
        return (await workflows.run(runs, name, run_id, after_seq)).public()

    async def list_workflows() -> Any:
        """The app's workflows (those you may read or start): each one's input schema and
        steps (the DAG)."""
        return {"items": workflows.definitions(state, tool_caller())}

    return [start_workflow, get_workflow_run, list_workflows]
