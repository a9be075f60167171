"""Health: `/livez` (the process), `/readyz` (NATS, JetStream, streams, projections not stale),
`/health` (application/health+json: pass|warn|fail per check; fail gives 503), which also
warns about registered components whose heartbeat stopped or whose health check fails (the
monitor's last round: services/edge/monitor.py). A warning, not a failure: the edge is fine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from bus import BusError, silent_components
from services.runtime.checks import Checks, connection_checks

router = APIRouter(tags=["health"])
STALE_LAG = 10_000  # events a projection may trail before it is "warn"


async def checks(state: State) -> Checks:
    found = await connection_checks(state.bus, state.app)
    if not found.passed("jetstream:responseTime"):
        return found
    for projection in state.app.projections.values():
        status = await state.views[projection.name].status()
        verdict = "pass" if status.lag <= STALE_LAG else "warn"
        found.add(f"projection:{projection.name}:lag", verdict, status.lag, "events")
    return found


async def add_silent_components(state: State, found: Checks) -> None:
    """A warning for each registered instance whose heartbeat stopped (see bus.registry)."""
    try:
        silent = await silent_components(state.bus)
    except BusError as exc:
        found.add("components:heartbeats", "warn", output=f"registry unreadable: {exc}")
        return
    for s in silent:
        c = s.component
        output = (
            f"instance {c.instance} on {c.host or '?'}: no heartbeat for {s.silent_for:g} s "
            f"(one every {c.ttl / 3:g} s) and no deregistration"
        )
        found.add(f"component:{c.name}", "warn", s.silent_for, "s", output)
    told = {s.component.key for s in silent}
    for v in state.monitor.failing() if state.monitor else []:
        if v.key not in told:
            found.add(f"component:{v.name}", "warn", output=f"instance {v.instance}: {v.reason}")


async def report(state: State) -> dict[str, Any]:
    found = await checks(state)
    if found.status != "fail":
        await add_silent_components(state, found)
    return {"status": found.status, "serviceId": state.app.name, "checks": found}


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "pass"}


STATUS = {"type": "object", "properties": {"status": {"enum": ["pass", "warn", "fail"]}}}
REPORT = {
    "type": "object",
    "properties": {
        "status": {"enum": ["pass", "warn", "fail"]},
        "serviceId": {"type": "string"},
        "checks": {"type": "object"},
    },
    "required": ["status", "checks"],
}


def _documented(media_type: str, schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    content = {"content": {media_type: {"schema": schema}}}
    return {
        200: {"description": "pass or warn", **content},
        503: {"description": "fail", **content},
    }


@router.get("/readyz", responses=_documented("application/json", STATUS))
async def readyz(request: Request) -> JSONResponse:
    status = (await checks(request.app.state)).status
    return JSONResponse({"status": status}, status_code=503 if status == "fail" else 200)


@router.get("/health", responses=_documented("application/health+json", REPORT))
async def health(request: Request) -> JSONResponse:
    body = await report(request.app.state)
    status = body["status"]
    return JSONResponse(
        body, status_code=503 if status == "fail" else 200, media_type="application/health+json"
    )
