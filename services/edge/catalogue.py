"""Read-only views of what the bus holds: streams and their events, components, schemas."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from bus import (
    Bus,
    BusError,
    Component,
    HealthRecords,
    components,
    json_schema,
    silent_components,
)

from .auth import require
from .monitor import listing, with_health, worst
from .permissions import may_read_stream, permit_stream

NAME_PATTERN = r"^[A-Za-z0-9_\-:~@=+%!]+$"  # one subject token, as bus.registry requires
router = APIRouter(
    prefix="/api/v1", tags=["catalogue"], dependencies=[Depends(require("read", narrowed=True))]
)


def _json(data: Any) -> Response:
    return Response(msgspec.json.encode(data), media_type="application/json")


@router.get("/streams")
async def list_streams(request: Request) -> Response:
    """The streams this caller may read (the backbone's: admin only)."""
    state, who = request.app.state, request.state.principal
    return _json([s for s in await state.bus.streams.list() if may_read_stream(state, who, s.name)])


@router.get("/streams/{name}")
async def stream_info(request: Request, name: str) -> Response:
    await permit_stream(request.app.state, request.state.principal, name)
    return _json(await request.app.state.bus.streams.info(name))


@router.get("/streams/{name}/events")
async def stream_events(
    request: Request,
    name: str,
    from_seq: int = Query(1, ge=1),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    """Stored events from `from_seq`, each decoded with its metadata; `next_seq` pages on."""
    await permit_stream(request.app.state, request.state.principal, name)
    return _json(await stream_page(request.app.state.bus, name, from_seq, limit))


async def stream_page(bus: Bus, name: str, from_seq: int, limit: int) -> dict[str, Any]:
    stored = await bus.read(name, from_seq, limit)
    items = []
    for m in stored:
        item: dict[str, Any] = {"seq": m.seq, "subject": m.subject, "time": m.time}
        try:
            envelope = bus.open(m)
            item |= {
                "type": type(envelope.event).__event_type__,
                "id": envelope.id,
                "correlation_id": envelope.correlation_id,
                "causation_id": envelope.causation_id,
                "principal": envelope.principal,
                "data": envelope.event,
            }
        except BusError as exc:  # shown as what it is, not hidden
            item |= {"type": m.headers.get("Bus-Event-Type"), "undecodable": str(exc)}
        items.append(item)
    next_seq = stored[-1].seq + 1 if len(stored) == limit else None
    return {"items": items, "next_seq": next_seq}


@router.get("/components", dependencies=[Depends(require("read"))])
async def list_components(request: Request) -> Response:
    """Running components, then registered instances whose heartbeat stopped, each with the
    health monitor's last verdict on it (`health`; services/edge/monitor.py)."""
    return _json(await listing(request.app.state.bus))


@router.get("/components/{name}")
async def one_component(
    request: Request, name: str = Path(max_length=Component.MAX_NAME, pattern=NAME_PATTERN)
) -> Response:
    """The running instances of component `name` (with their health URLs), and those whose
    heartbeat stopped without a deregistration (`silent`, with seconds since the last); each
    with the monitor's last verdict (`health`), and `status` the worst of them."""
    bus = request.app.state.bus
    running = await components(bus, name)
    silent = [s for s in await silent_components(bus, name) if s.component not in running]
    if not running and not silent:
        raise HTTPException(404, f"no component named {name!r} is registered")
    verdicts = await HealthRecords(bus).by_key()
    instances = [with_health(c, verdicts.get(c.key)) for c in running]
    stopped = [with_health(s, verdicts.get(s.component.key)) for s in silent]
    status = worst(i["health"] for i in [*instances, *stopped])
    return _json({"name": name, "status": status, "instances": instances, "silent": stopped})


@router.get("/schemas")
async def schemas(request: Request) -> Response:
    """JSON Schema of every registered event type and version."""
    return _json(json_schema(request.app.state.app.registry))
