"""Projection queries, with read-your-writes through `after_seq`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import BusTimeout, LiveView, ProjectionStatus

from .auth import require
from .permissions import may_read_projection, permit_projection
from .tokens import Principal

router = APIRouter(prefix="/api/v1/projections", tags=["projections"])
read = [Depends(require("read", narrowed=True))]  # checked per projection (its subjects)
AFTER_SEQ = "Wait until the projection has applied this stream sequence"
STALE_OK = "On timeout, answer with what is there (header Bus-Stale: true)"


def query_parameters(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """`openapi_extra` declaring `cls`'s fields as query parameters (the docs stay true)."""
    fields = msgspec.json.schema(cls)["$defs"][cls.__name__]
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": _without_null(field)}
            for name, field in fields["properties"].items()
        ]
    }


def _without_null(field: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent, never `null`: keep the other branch."""
    branches = [b for b in field.get("anyOf", ()) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else field


def _json(data: Any, **headers: str) -> Response:
    return Response(msgspec.json.encode(data), media_type="application/json", headers=headers)


def _view(state: State, name: str) -> LiveView[Any]:
    views: dict[str, LiveView[Any]] = state.views
    if name not in views:
        raise HTTPException(404, f"no projection named {name!r}")
    return views[name]


async def statuses(state: State, who: Principal | None) -> list[ProjectionStatus]:
    """The status of each projection `who` may read."""
    views = state.views.items()
    return [await v.status() for name, v in views if may_read_projection(state, who, name)]


async def query(
    state: State, name: str, key: str, after_seq: int | None, timeout: float, stale_ok: bool
) -> tuple[dict[str, Any], bool]:
    """One key's state and whether it is stale; with `after_seq`, once that is applied."""
    view = _view(state, name)
    stale = False
    if after_seq is not None:
        try:
            await view.wait_for(after_seq, timeout)
        except BusTimeout:
            if not stale_ok:
                raise
            stale = True
    found = await view.get(key)
    if found is None:
        raise HTTPException(404, f"projection {name!r} has no key {key!r}")
    state_, seq = found
    return {"key": key, "seq": seq, "state": state_}, stale


@router.get("", dependencies=read)
async def list_projections(request: Request) -> Response:
    """Every projection's generation, position, lag and failures (those the caller may read)."""
    return _json(await statuses(request.app.state, request.state.principal))


@router.get("/{name}", dependencies=read)
async def list_keys(
    request: Request,
    name: str,
    prefix: str = Query("", max_length=256),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=1024),
) -> Response:
    """Keys in order with their state; pass the returned cursor for the next page."""
    permit_projection(request.app.state, request.state.principal, name)
    return _json(await list_page(request.app.state, name, prefix, limit, cursor))


async def list_page(
    state: State, name: str, prefix: str, limit: int, cursor: str | None
) -> dict[str, Any]:
    page, next_cursor = await _view(state, name).list(prefix, limit, cursor)
    return {"items": [{"key": k, "state": v} for k, v in page], "cursor": next_cursor}


class KeyQuery(msgspec.Struct):
    """The query of a key read; the route and the fast path (fastpath.py) both parse it."""

    after_seq: Annotated[int, msgspec.Meta(ge=1, description=AFTER_SEQ)] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0
    stale_ok: Annotated[bool, msgspec.Meta(description=STALE_OK)] = False


@router.get("/{name}/{key}", dependencies=read, openapi_extra=query_parameters(KeyQuery))
async def get_key(request: Request, name: str, key: str) -> Response:
    """One key's state; with `after_seq`, only once the projection has applied it."""
    permit_projection(request.app.state, request.state.principal, name)
    try:
        q = msgspec.convert(dict(request.query_params), KeyQuery, strict=False)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"query: {exc}") from None
    found, stale = await query(request.app.state, name, key, q.after_seq, q.timeout, q.stale_ok)
    return _json(found, **({"Bus-Stale": "true"} if stale else {}))
