"""Health: `/livez` (the process), `/readyz` (NATS, JetStream, streams, projections not stale),
`/health` (application/health+json: pass|warn|fail per check; fail gives 503)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from bus import BusError

router = APIRouter(tags=["health"])
STALE_LAG = 10_000  # events a projection may trail before it is "warn"


async def checks(state: State) -> dict[str, list[dict[str, Any]]]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    found: dict[str, list[dict[str, Any]]] = {}

    def add(name: str, status: str, value: Any = None, unit: str = "", output: str = "") -> None:
        entry: dict[str, Any] = {"status": status, "time": now}
        if value is not None:
            entry |= {"observedValue": value, "observedUnit": unit}
        if output:
            entry["output"] = output
        found.setdefault(name, []).append(entry)

    bus = state.bus
    add("nats:connected", "pass" if bus.connected else "fail", bus.connected, "boolean")
    if not bus.connected:
        return found
    started = time.perf_counter()
    try:
        summaries = {s.name: s for s in await bus.streams.list()}
        add(
            "jetstream:responseTime", "pass", round((time.perf_counter() - started) * 1000, 2), "ms"
        )
    except BusError as exc:
        add("jetstream:responseTime", "fail", output=str(exc))
        return found
    for spec in state.app.streams:
        exists = spec.name in summaries
        add(f"stream:{spec.name}", "pass" if exists else "fail", exists, "boolean")
    for projection in state.app.projections.values():
        status = await state.views[projection.name].status()
        verdict = "pass" if status.lag <= STALE_LAG else "warn"
        add(f"projection:{projection.name}:lag", verdict, status.lag, "events")
    return found


def overall(found: dict[str, list[dict[str, Any]]]) -> str:
    statuses = {entry["status"] for entries in found.values() for entry in entries}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


async def report(state: State) -> dict[str, Any]:
    found = await checks(state)
    return {"status": overall(found), "serviceId": state.app.name, "checks": found}


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
    status = overall(await checks(request.app.state))
    return JSONResponse({"status": status}, status_code=503 if status == "fail" else 200)


@router.get("/health", responses=_documented("application/health+json", REPORT))
async def health(request: Request) -> JSONResponse:
    body = await report(request.app.state)
    status = body["status"]
    return JSONResponse(
        body, status_code=503 if status == "fail" else 200, media_type="application/health+json"
    )
