"""Projection queries, with read-your-writes through `after_seq`."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import BusTimeout
from bus.projection import ProjectionStatus, ProjectionView

from .auth import require

router = APIRouter(prefix="/api/v1/projections", tags=["projections"])
read = [Depends(require("read"))]


def _json(data: Any, **headers: str) -> Response:
    return Response(msgspec.json.encode(data), media_type="application/json", headers=headers)


def _view(state: State, name: str) -> ProjectionView[Any]:
    projections = state.app.projections
    if name not in projections:
        raise HTTPException(404, f"no projection named {name!r}")
    return ProjectionView(state.bus, projections[name])


async def statuses(state: State) -> list[ProjectionStatus]:
    return [await ProjectionView(state.bus, p).status() for p in state.app.projections.values()]


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
    """Every projection's generation, position, lag and failures."""
    return _json(await statuses(request.app.state))


@router.get("/{name}", dependencies=read)
async def list_keys(
    request: Request,
    name: str,
    prefix: str = Query("", max_length=256),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=1024),
) -> Response:
    """Keys in order with their state; pass the returned cursor for the next page."""
    return _json(await list_page(request.app.state, name, prefix, limit, cursor))


async def list_page(
    state: State, name: str, prefix: str, limit: int, cursor: str | None
) -> dict[str, Any]:
    page, next_cursor = await _view(state, name).list(prefix, limit, cursor)
    return {"items": [{"key": k, "state": v} for k, v in page], "cursor": next_cursor}


@router.get("/{name}/{key}", dependencies=read)
async def get_key(
    request: Request,
    name: str,
    key: str,
    after_seq: int | None = Query(None, ge=1, description="Wait until this sequence is applied"),
    timeout: float = Query(5.0, gt=0, le=30),
    stale_ok: bool = Query(False, description="On timeout, answer with what is there"),
) -> Response:
    """One key's state; with `after_seq`, only once the projection has applied it."""
    found, stale = await query(request.app.state, name, key, after_seq, timeout, stale_ok)
    return _json(found, **({"Bus-Stale": "true"} if stale else {}))
