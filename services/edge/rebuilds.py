"""`POST /api/v1/projections/{name}:rebuild`: ask the projector running a projection to refill
it in a new generation (what `bus projections rebuild` does); `GET` on the same path: how far
the rebuild has come (`rebuild_position` against `position`) until the generation switches."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from bus import NoResponders, validate_token
from services.runtime.rebuild_requests import REBUILD_SUBJECT, RebuildAnswer, RebuildRequest

from .auth import require
from .permissions import permit_projection

router = APIRouter(prefix="/api/v1/projections", tags=["projections"])


@router.get("/{name}:rebuild", dependencies=[Depends(require("read", narrowed=True))])
async def progress(request: Request, name: str) -> Response:
    """The projection's generation and, while a rebuild fills the next one, its position
    beside the current generation's (`progress` 0 to 1; null when none runs)."""
    views = request.app.state.views
    permit_projection(request.app.state, request.state.principal, name)
    if name not in views:
        raise HTTPException(404, f"no projection named {name!r}")
    s = await views[name].status()
    done = min(1.0, s.rebuild_position / max(1, s.position)) if s.rebuilding else None
    shown = {"name": name, "generation": s.generation, "rebuilding": s.rebuilding}
    shown |= {"rebuild_position": s.rebuild_position, "position": s.position, "progress": done}
    return Response(msgspec.json.encode(shown), media_type="application/json")


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
