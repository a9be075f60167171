"""`GET /api/v1/session`: what the caller's key may do, so the console shows only the
buttons that would work (the routes check again), and where traces are linked."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.edge.auth import caller_scopes

router = APIRouter(prefix="/api/v1", tags=["console"])


class Session(msgspec.Struct):
    app: str
    scopes: list[str]  # read, write, admin; empty for a keyless caller on public reads
    public_reads: bool
    grafana_url: str | None


@router.get("/session")
async def session(request: Request) -> Response:
    """The caller's scopes (401 for an unknown key, or no key unless reads are public)."""
    state = request.app.state
    header = request.headers.get("authorization")
    scopes = [] if header is None and state.public_reads else await caller_scopes(state, header)
    found = Session(state.app.name, sorted(scopes), state.public_reads, state.grafana_url)
    return Response(msgspec.json.encode(found), media_type="application/json")
