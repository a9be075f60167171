"""`POST /api/v1/events/{subject}`: publish one event, validated against its registered type."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import ConfigError, Event, EventStore
from bus.publish import MAX_ATOMIC_BATCH
from bus.subjects import parse_event_subject, validate_token

from .auth import require
from .limits import charge, publish_limit

router = APIRouter(prefix="/api/v1", tags=["events"])
MAX_ID = 128


class Published(msgspec.Struct):
    id: str
    stream: str
    seq: int


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    event: str  # the event name, as in the subject: "created"
    data: dict[str, Any]


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    domain: str
    id: str
    events: list[BatchItem]
    expected_version: int | None = None


class BatchResult(msgspec.Struct):
    stream: str
    version: int
    events: list[Published]


_decode_batch = msgspec.json.Decoder(BatchRequest).decode


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the edge's limit."""
    limit: int = request.app.state.body_limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/events/{subject}",
    status_code=201,
    dependencies=[Depends(require("write")), Depends(publish_limit)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
    responses={201: {"description": "Stored (or already stored under this Idempotency-Key)"}},
)
async def publish_event(
    subject: str,
    request: Request,
    idempotency_key: str | None = Header(default=None, max_length=MAX_ID),
    if_match: str | None = Header(default=None, max_length=20),
) -> Response:
    """Publish the JSON body as the event `subject` names (`<domain>.<id>.<event>`)."""
    expected = None
    if if_match is not None:
        text = if_match.strip('"')
        if not text.isdigit():
            raise HTTPException(400, "If-Match must be a version number")
        expected = int(text)
    body = await read_body(request)
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    published = await publish_fields(request.app.state, subject, fields, idempotency_key, expected)
    return Response(msgspec.json.encode(published), status_code=201, media_type="application/json")


async def publish_fields(
    state: State, subject: str, fields: Any, event_id: str | None, expected: int | None
) -> Published:
    """Validate `fields` as the event `subject` names and publish it (HTTP and MCP share this)."""
    domain, aggregate_id, name = parse_event_subject(subject)
    cls = _event_type(state, domain, name)
    if event_id is not None:
        validate_token(event_id, "Idempotency-Key")
    event = _event(cls, fields)
    try:
        result = await state.bus.publish(
            event, aggregate_id, event_id=event_id, expected_version=expected
        )
    except ConfigError as exc:  # e.g. a header value the wire cannot carry
        raise HTTPException(400, str(exc)) from None
    return Published(result.event_id, result.stream, result.seq)


def _event_type(state: State, domain: str, name: str) -> type[Event]:
    cls: type[Event] | None = state.app.registry.by_subject(domain, name)
    if cls is None:
        raise HTTPException(404, f"no event type is registered for {domain}.*.{name}")
    return cls


def _event(cls: type[Event], fields: Any) -> Event:
    """The event from decoded JSON fields; unknown fields are refused, not dropped."""
    if not isinstance(fields, dict):
        raise HTTPException(422, f"{cls.__event_type__}: the body must be a JSON object")
    unknown = sorted(set(fields) - set(cls.__struct_fields__))
    if unknown:
        raise HTTPException(422, f"{cls.__event_type__}: unknown field(s) {', '.join(unknown)}")
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"{cls.__event_type__}: {exc}") from None


@router.post(
    "/events:batch",
    status_code=201,
    dependencies=[Depends(require("write"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": msgspec.json.schema(BatchRequest)}},
        }
    },
)
async def publish_batch(request: Request) -> Response:
    """Several events for one aggregate, stored atomically: all of them or none."""
    body = await read_body(request)
    try:
        batch = _decode_batch(body)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    if not 1 <= len(batch.events) <= MAX_ATOMIC_BATCH:
        raise HTTPException(422, f"a batch holds 1 to {MAX_ATOMIC_BATCH} events")
    charge(
        request.app.state.publish_buckets, request.headers.get("authorization"), len(batch.events)
    )
    validate_token(batch.domain, "domain")
    validate_token(batch.id, "aggregate id")
    events = [
        _event(
            _event_type(request.app.state, batch.domain, validate_token(item.event, "event")),
            item.data,
        )
        for item in batch.events
    ]
    stored = await EventStore(request.app.state.bus).append(
        batch.domain, batch.id, events, expected_version=batch.expected_version
    )
    out = BatchResult(
        stored.stream,
        stored.version,
        [Published(r.event_id, r.stream, r.seq) for r in stored.events],
    )
    return Response(msgspec.json.encode(out), status_code=201, media_type="application/json")
