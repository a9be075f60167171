"""Read-only views of what the bus holds: streams and their events, components, schemas."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from bus import (
    Bus,
    Component,
    HealthRecords,
    components,
    json_schema,
    silent_components,
    validate_pattern,
)

from . import stream_reads
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


@router.get("/streams/{name}/consumers")
async def stream_consumers(request: Request, name: str) -> Response:
    """The stream's consumers: `pending` (stored, not yet delivered) and `ack_pending`."""
    await permit_stream(request.app.state, request.state.principal, name)
    return _json(await request.app.state.bus.streams.consumers(name))


@router.get("/streams/{name}/events")
async def stream_events(
    request: Request,
    name: str,
    from_seq: int = Query(1, ge=1, le=stream_reads.MAX_SEQ),
    limit: int = Query(100, ge=1, le=1000),
    subject: str | None = Query(None, max_length=256, description="A subject pattern"),
    before_seq: int | None = Query(
        None,
        ge=1,
        le=stream_reads.MAX_SEQ,
        description="Newest first: events before this sequence (next_before_seq)",
    ),
    newest: bool = Query(False, description="Newest first, from the end of the stream"),
) -> Response:
    """Stored events, each decoded with its metadata: from `from_seq` on (`next_seq` pages
    on), or newest first with `newest` or `before_seq` (`next_before_seq` pages back)."""
    bus = request.app.state.bus
    await permit_stream(request.app.state, request.state.principal, name)
    if subject is not None:
        validate_pattern(subject)
    if newest or before_seq is not None:
        return _json(await stream_reads.newest_first(bus, name, before_seq, limit, subject))
    return _json(await stream_page(bus, name, from_seq, limit, subject))


@router.get("/streams/{name}/events/{seq}")
async def stream_event(
    request: Request, name: str, seq: int = Path(ge=1, le=stream_reads.MAX_SEQ)
) -> Response:
    """One stored event with every header."""
    await permit_stream(request.app.state, request.state.principal, name)
    return _json(await stream_reads.one(request.app.state.bus, name, seq))


@router.get("/streams/{name}/events/by-id/{event_id}")
async def stream_event_by_id(
    request: Request,
    name: str,
    event_id: str = Path(max_length=64),
    before_seq: int | None = Query(
        None,
        ge=1,
        le=stream_reads.MAX_SEQ,
        description="A handler's derived id (UUIDv8): look back from this sequence (an event "
        "it caused; default: the stream's end)",
    ),
) -> Response:
    """The event with this id, with every header: a UUIDv7 (as the bus makes them) read from
    the time it carries, a UUIDv8 (as handlers derive them) read back by sequence from
    `before_seq`; a few pages either way, never a scan."""
    await permit_stream(request.app.state, request.state.principal, name)
    bus = request.app.state.bus
    return _json(await stream_reads.by_id(bus, name, event_id, before_seq))


async def stream_page(
    bus: Bus, name: str, from_seq: int, limit: int, subject: str | None = None
) -> dict[str, Any]:
    stored = await bus.read(name, from_seq, limit, subject)
    next_seq = stored[-1].seq + 1 if len(stored) == limit else None
    return {"items": [stream_reads.shown(bus, m) for m in stored], "next_seq": next_seq}


@router.get("/components", dependencies=[Depends(require("read"))])
async def list_components(request: Request) -> Response:
    """Running components, then registered instances whose heartbeat stopped, each with the
    health monitor's last verdict on it (`health`; services/edge/monitor.py)."""
    return _json(await listing(request.app.state.bus))


@router.get("/components/{name}", dependencies=[Depends(require("read"))])
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
