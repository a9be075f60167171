"""`POST /api/v1/events/{subject}`: publish one event, validated against its registered type."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response

from bus import ConfigError
from bus.subjects import parse_event_subject, validate_token

from .auth import require

router = APIRouter(prefix="/api/v1", tags=["events"])
MAX_ID = 128


class Published(msgspec.Struct):
    id: str
    stream: str
    seq: int


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
    dependencies=[Depends(require("write"))],
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
    domain, aggregate_id, name = parse_event_subject(subject)
    cls = request.app.state.app.registry.by_subject(domain, name)
    if cls is None:
        raise HTTPException(404, f"no event type is registered for {domain}.*.{name}")
    expected = None
    if if_match is not None:
        text = if_match.strip('"')
        if not text.isdigit():
            raise HTTPException(400, "If-Match must be a version number")
        expected = int(text)
    if idempotency_key is not None:
        validate_token(idempotency_key, "Idempotency-Key")
    body = await read_body(request)
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise HTTPException(422, f"{cls.__event_type__}: the body must be a JSON object")
    unknown = sorted(set(fields) - set(cls.__struct_fields__))
    if unknown:
        raise HTTPException(422, f"{cls.__event_type__}: unknown field(s) {', '.join(unknown)}")
    try:
        event = msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"{cls.__event_type__}: {exc}") from None
    try:
        result = await request.app.state.bus.publish(
            event, aggregate_id, event_id=idempotency_key, expected_version=expected
        )
    except ConfigError as exc:  # e.g. a header value the wire cannot carry
        raise HTTPException(400, str(exc)) from None
    body_out = msgspec.json.encode(Published(result.event_id, result.stream, result.seq))
    return Response(body_out, status_code=201, media_type="application/json")
