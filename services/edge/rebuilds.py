"""`POST /api/v1/projections/{name}:rebuild`: ask the projector running a projection to refill
it in a new generation (what `bus projections rebuild` does). Progress shows in
`GET /api/v1/projections` (`rebuilding`, `rebuild_position` against `position`) until the
generation switches."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from bus import NoResponders, validate_token
from services.runtime.rebuild_requests import REBUILD_SUBJECT, RebuildAnswer, RebuildRequest

from .auth import require

router = APIRouter(prefix="/api/v1/projections", tags=["projections"])


@router.post("/{name}:rebuild", status_code=202, dependencies=[Depends(require("write"))])
async def rebuild(request: Request, name: str) -> Response:
    """Start a rebuild (202); 404 for an unknown projection, 409 if one already runs, 503
    when no projector runs it."""
    state = request.app.state
    if name not in state.views:
        raise HTTPException(404, f"no projection named {name!r}")
    validate_token(name, "projection")
    try:
        answer = await state.bus.request(
            f"{REBUILD_SUBJECT}.{name}", RebuildRequest(), RebuildAnswer, timeout=5
        )
    except NoResponders:
        raise HTTPException(503, f"no projector runs {name!r}") from None
    if not answer.started:
        raise HTTPException(409, answer.error or "the projector refused")
    return Response(msgspec.json.encode(answer), 202, media_type="application/json")
