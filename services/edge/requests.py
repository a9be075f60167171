"""`POST /api/v1/requests/{subject}`: a request to one of the app's responders, answered with
its reply. Only subjects the app serves are reachable, so the edge is no proxy onto `$JS`,
`$SRV`, inboxes or other services; a caller limited to patterns needs a `request:` one
matching the subject (`write` holds them all); the body is checked against the responder's request type
before anything is sent. A timeout answers 504; an open circuit or nobody serving, 503 with
`Retry-After`; a responder's own 4xx, its code; its other errors, 502. HTTP and MCP share
`call`."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import (
    App,
    CircuitOpen,
    InvalidSubject,
    NoResponders,
    RemoteError,
    RequestTimeout,
    matches,
    validate_subject,
)

from .auth import require
from .events import read_body
from .permissions import permit
from .tokens import Principal

router = APIRouter(prefix="/api/v1", tags=["requests"])
MAX_TIMEOUT = 30.0  # seconds a caller may ask the edge to wait for a reply
NOBODY_RETRY = "1"  # seconds suggested when nobody serves the subject (yet)
TIMEOUT = Query(5.0, gt=0, le=MAX_TIMEOUT, description="Seconds to wait for the reply")
_STATUSES = {s.value for s in HTTPStatus}


def served(app: App, subject: str) -> tuple[str, Any]:
    """(the pattern the app serves `subject` (a valid subject) on, its request type); 404 for
    one the app does not serve."""
    for spec in app.router.responders:
        if matches(spec.subject, subject):
            return spec.subject, spec.request_type
    raise HTTPException(404, f"the app serves no requests on {subject!r}")


async def call(
    state: State, who: Principal | None, subject: str, fields: Any, timeout: float
) -> bytes:
    """The reply's JSON to `fields` (decoded JSON) on `subject` for `who`, or the
    HTTPException saying why not; nothing is sent unless `fields` are a valid request. A
    subject is checked (400), then the caller's permission (403), and only then whether the
    app serves it (404): a caller learns nothing of subjects it may not call."""
    try:
        validate_subject(subject)
    except InvalidSubject as exc:
        raise HTTPException(400, str(exc)) from None
    permit(who, "request", subject)
    pattern, request_type = served(state.app, subject)
    try:
        payload = msgspec.convert(fields, request_type)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"not a valid request on {pattern}: {exc}") from None
    try:
        reply = await state.bus.request(subject, payload, msgspec.Raw, timeout, endpoint=pattern)
    except CircuitOpen as exc:
        retry = str(max(1, math.ceil(exc.retry_after)))
        raise HTTPException(503, str(exc), headers={"Retry-After": retry}) from None
    except NoResponders as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": NOBODY_RETRY}) from None
    except RequestTimeout as exc:
        raise HTTPException(504, str(exc)) from None
    except RemoteError as exc:
        status = exc.code if exc.callers_fault and exc.code in _STATUSES else 502
        raise HTTPException(status, f"{pattern} answered {exc.code}: {exc.description}") from None
    return bytes(reply)


@router.post(
    "/requests/{subject}",
    dependencies=[Depends(require("write", narrowed=True, kinds=("request",)))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
    responses={
        200: {"description": "The responder's reply", "content": {"application/json": {}}},
        503: {"description": "The circuit is open or nobody serves it: see Retry-After"},
        504: {"description": "No reply in time"},
    },
)
async def make_request(subject: str, request: Request, timeout: float = TIMEOUT) -> Response:
    """Send the JSON body as a request on `subject` (one the app serves, e.g. `tasks.get`)
    and answer with the reply. A request may change things: it needs the write scope, or a
    `request:` pattern matching the subject."""
    body = await read_body(request)
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    with request.app.state.bus.telemetry.continuing(request.headers):
        reply = await call(request.app.state, request.state.principal, subject, fields, timeout)
    return Response(reply, media_type="application/json")
