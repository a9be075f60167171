"""Workflow runs over HTTP: start (with an `Idempotency-Key`, once), read, list, cancel.

POST /api/v1/workflows/{name}/runs                 201 {run_id, workflow, status, stream, seq}
GET  /api/v1/workflows/{name}/runs/{run_id}        the run (?after_seq= waits for it)
GET  /api/v1/workflows/{name}/runs                 ?status=&limit=&cursor=
POST /api/v1/workflows/{name}/runs/{run_id}:cancel 202
GET  /api/v1/workflows                             definitions, with their DAGs
GET  /api/v1/workflows/counts                      each workflow's runs and steps by status

A caller limited to patterns reaches a workflow by its name, `$WF.<name>`: a `read:` pattern
to read its runs, a `publish:` one to start and cancel them (services/edge/grants.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import ConfigError, IdempotencyRecords, RunView, Workflows, acting_as

from .auth import require
from .events import KEY_HEADER, created, read_body
from .grants import workflow_name
from .idempotent import Answer, once
from .limits import charge, publish_limit
from .permissions import permit_workflow, reaches
from .projections import AFTER_SEQ, query_parameters
from .tokens import Principal

router = APIRouter(prefix="/api/v1/workflows", tags=["workflows"])
read = [Depends(require("read", narrowed=True))]  # checked per workflow ($WF.<name>)
write = [Depends(require("write", narrowed=True))]  # charged once the workflow is permitted
_encode = msgspec.json.Encoder().encode
_canonical = msgspec.json.Encoder(order="sorted").encode


class RunQuery(msgspec.Struct):
    after_seq: Annotated[int, msgspec.Meta(ge=1, description=AFTER_SEQ)] | None = None


class ListQuery(msgspec.Struct):
    status: Literal["running", "completed", "failed", "cancelled"] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None


def workflows(state: State) -> Workflows:
    """The app's workflows on the edge's bus (made once)."""
    if getattr(state, "workflows", None) is None:
        state.workflows = Workflows(state.bus, state.app)
    runs: Workflows = state.workflows
    return runs


def _json(data: Any, status: int = 200) -> Response:
    return Response(_encode(data), status_code=status, media_type="application/json")


def _query(request: Request, cls: type[Any]) -> Any:
    try:
        return msgspec.convert(dict(request.query_params), cls, strict=False)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"query: {exc}") from None


def known(state: State, name: str) -> Workflows:
    runs = workflows(state)
    if name not in state.app.workflows:
        raise HTTPException(404, f"no workflow named {name!r}")
    return runs


async def run(runs: Workflows, name: str, run_id: str, after_seq: int | None) -> RunView:
    try:
        run = await runs.get(run_id, after_seq) if run_id.startswith(f"{name}-") else None
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from None
    if run is None:
        raise HTTPException(404, f"workflow {name!r} has no run {run_id!r}")
    return run


@router.get("", dependencies=read)
async def list_definitions(request: Request) -> Response:
    """Every workflow of the app: its input schema and its steps (the DAG); those the caller
    may read or start."""
    return _json({"items": definitions(request.app.state, request.state.principal)})


def definitions(state: State, who: Principal | None) -> list[Any]:
    """The workflows `who` may read or start (HTTP and MCP share this)."""
    found = workflows(state).definitions()
    return [d for d in found if reaches(who, ("read", "publish"), workflow_name(d["name"]))]


@router.get("/counts", dependencies=read)
async def run_counts(request: Request) -> Response:
    """Each workflow's runs and steps by status, from one read of the runs (the overview's);
    the workflows the caller may read."""
    state, who = request.app.state, request.state.principal
    counted = await workflows(state).counts()
    empty: dict[str, dict[str, Any]] = {"runs": {}, "steps": {}}
    names = [n for n in sorted(state.app.workflows) if reaches(who, ("read",), workflow_name(n))]
    return _json({"items": [{"name": n, **counted.get(n, empty)} for n in names]})


@router.post(
    "/{name}/runs",
    status_code=201,
    dependencies=write,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def start_run(
    name: str, request: Request, idempotency_key: str | None = KEY_HEADER
) -> Response:
    """Start a run with the JSON body as its input (checked against the workflow's type)."""
    state = request.app.state
    body = await read_body(request)
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    who = request.state.principal  # the run's events say who started it
    with state.bus.telemetry.continuing(request.headers), acting_as(who.name):
        answer = await start(state, who, name, data, idempotency_key)
    return created(answer)


async def start(
    state: State,
    who: Principal,
    name: str,
    data: Any,
    key: str | None,
    key_name: str = "Idempotency-Key",
) -> Answer:
    """Validate and start (HTTP and MCP share this), as `who` may; once per `key`."""
    runs = known(state, name)
    permit_workflow(who, "write", name)
    await charge(state.publish_buckets, who.name)
    try:
        runs.definition(name).parse_input(data)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"input of workflow {name!r}: {exc}") from None
    if key is not None:
        IdempotencyRecords.check_key(key, key_name)

    async def attempt(takeover: bool) -> bytes:
        return _encode(await runs.start(name, data, idempotency_key=key))

    if key is None:
        return Answer(await attempt(False), False)
    fingerprint = IdempotencyRecords.fingerprint("workflow", name, _canonical(data))
    return await once(state, key, fingerprint, attempt)


@router.get("/{name}/runs", dependencies=read, openapi_extra=query_parameters(ListQuery))
async def list_runs(name: str, request: Request) -> Response:
    """Runs of the workflow, oldest first; pass the returned cursor for the next page."""
    q: ListQuery = _query(request, ListQuery)
    runs = known(request.app.state, name)
    permit_workflow(request.state.principal, "read", name)
    page, cursor = await runs.list(name, q.status, q.limit, q.cursor)
    return _json({"items": [run.public() for run in page], "cursor": cursor})


@router.get("/{name}/runs/{run_id}", dependencies=read, openapi_extra=query_parameters(RunQuery))
async def get_run(name: str, run_id: str, request: Request) -> Response:
    """The run and its steps; with `after_seq`, once the run projection has seen it."""
    if run_id.endswith(":cancel"):  # no run id has a colon: this is the cancel resource
        raise HTTPException(405, "only POST cancels a run", headers={"Allow": "POST"})
    q: RunQuery = _query(request, RunQuery)
    runs = known(request.app.state, name)
    permit_workflow(request.state.principal, "read", name)
    return _json((await run(runs, name, run_id, q.after_seq)).public())


@router.post("/{name}/runs/{run_id}:cancel", status_code=202, dependencies=write)
async def cancel_run(name: str, run_id: str, request: Request) -> Response:
    """Ask the run to stop; a finished run stays as it is (the answer shows its status)."""
    runs = known(request.app.state, name)
    permit_workflow(request.state.principal, "write", name)
    await publish_limit(request)
    try:
        answer = await runs.cancel(run_id) if run_id.startswith(f"{name}-") else None
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from None
    if answer is None:
        raise HTTPException(404, f"workflow {name!r} has no run {run_id!r}")
    return _json(answer, 202)
