"""Projection queries, with read-your-writes through `after_seq`."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from bus import BusTimeout
from bus.projection import ProjectionView

from .auth import require

router = APIRouter(prefix="/api/v1/projections", tags=["projections"])
read = [Depends(require("read"))]


def _json(data: Any, **headers: str) -> Response:
    return Response(msgspec.json.encode(data), media_type="application/json", headers=headers)


def _view(request: Request, name: str) -> ProjectionView[Any]:
    projections = request.app.state.app.projections
    if name not in projections:
        raise HTTPException(404, f"no projection named {name!r}")
    return ProjectionView(request.app.state.bus, projections[name])


@router.get("", dependencies=read)
async def list_projections(request: Request) -> Response:
    """Every projection's generation, position, lag and failures."""
    bus, projections = request.app.state.bus, request.app.state.app.projections
    return _json([await ProjectionView(bus, p).status() for p in projections.values()])


@router.get("/{name}", dependencies=read)
async def list_keys(
    request: Request,
    name: str,
    prefix: str = Query("", max_length=256),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=1024),
) -> Response:
    """Keys in order with their state; pass the returned cursor for the next page."""
    page, next_cursor = await _view(request, name).list(prefix, limit, cursor)
    items = [{"key": key, "state": state} for key, state in page]
    return _json({"items": items, "cursor": next_cursor})


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
    view = _view(request, name)
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
    state, seq = found
    headers = {"Bus-Stale": "true"} if stale else {}
    return _json({"key": key, "seq": seq, "state": state}, **headers)
