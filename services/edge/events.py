"""`POST /api/v1/events/{subject}` and `/events:batch`: publish events, validated against
their registered types; with an `Idempotency-Key`, once (see `idempotent`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import State

from bus import (
    ConfigError,
    Event,
    EventStore,
    IdempotencyRecords,
    acting_as,
    parse_event_subject,
    validate_token,
)

from .auth import require
from .idempotent import REPLAYED, Answer, once, stored_earlier
from .limits import charge, publish_limit
from .permissions import permit, publish_subject

router = APIRouter(prefix="/api/v1", tags=["events"])
KEY_HEADER = Header(
    default=None,
    description=f"Publish once: the same key and request within BUS_IDEMPOTENCY_TTL (a day by "
    f"default) answer the first result again. At most {IdempotencyRecords.MAX_KEY} characters, one subject token",
)
_encode = msgspec.json.Encoder().encode
_canonical = msgspec.json.Encoder(order="sorted").encode  # for fingerprints: key order aside


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
    events: Annotated[list[BatchItem], msgspec.Meta(min_length=1, max_length=EventStore.MAX_EVENTS)]
    expected_version: int | None = None


class BatchResult(msgspec.Struct):
    stream: str
    version: int
    events: list[Published]


_decode_batch = msgspec.json.Decoder(BatchRequest).decode


def _answer(description: str, body: type) -> dict[str, Any]:
    """An OpenAPI response whose JSON body is `body` (typed for generated clients)."""
    return {
        "description": description,
        "content": {"application/json": {"schema": msgspec.json.schema(body)}},
    }


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
    dependencies=[
        Depends(require("write", narrowed=True)),
        Depends(publish_subject),
        Depends(publish_limit),
    ],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
    responses={201: _answer("Stored (or already stored under this Idempotency-Key)", Published)},
)
async def publish_event(
    subject: str,
    request: Request,
    idempotency_key: str | None = KEY_HEADER,
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
    who = request.state.principal.name
    with request.app.state.bus.telemetry.continuing(request.headers), acting_as(who):
        answer = await publish_fields(request.app.state, subject, fields, idempotency_key, expected)
    return created(answer)


def expect_reads(state: State, stream: str, seq: int) -> None:
    """A read-your-writes query of `seq` is likely next: the views start looking (LiveView)."""
    for view in state.views.values():
        view.expect(stream, seq)


def created(answer: Answer) -> Response:
    """201 with the result; a replayed one says so."""
    headers = {REPLAYED: "true"} if answer.replayed else None
    return Response(answer.body, status_code=201, media_type="application/json", headers=headers)


async def publish_fields(
    state: State,
    subject: str,
    fields: Any,
    key: str | None,
    expected: int | None,
    key_name: str = "Idempotency-Key",
) -> Answer:
    """Validate `fields` as the event `subject` names and publish it, with `key` as its id
    (HTTP and MCP share this). Nothing reaches the idempotency records before it is valid."""
    domain, aggregate_id, name = parse_event_subject(subject)
    cls = _event_type(state, domain, name)
    if key is not None:
        IdempotencyRecords.check_key(key, key_name)
    event = _event(cls, fields)

    async def attempt(takeover: bool) -> bytes:
        if takeover and key and (found := await stored_earlier(state, subject, subject, [key])):
            return _encode(Published(key, found[0].stream, found[0].seq))
        result = await state.bus.publish(
            event, aggregate_id, event_id=key, expected_version=expected
        )
        expect_reads(state, result.stream, result.seq)
        return _encode(Published(result.event_id, result.stream, result.seq))

    try:
        if key is None:
            return Answer(await attempt(False), False)
        return await once(state, key, event_request(subject, fields, expected), attempt)
    except ConfigError as exc:  # e.g. a header value the wire cannot carry
        raise HTTPException(400, str(exc)) from None


def event_request(subject: str, fields: Any, expected: int | None) -> str:
    """The fingerprint of a publish: what makes two requests with one key the same request
    (the JSON's key order and spacing aside)."""
    return IdempotencyRecords.fingerprint("event", subject, str(expected), _canonical(fields))


def batch_request(batch: BatchRequest) -> str:
    return IdempotencyRecords.fingerprint("batch", _canonical(msgspec.to_builtins(batch)))


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
    dependencies=[Depends(require("write", narrowed=True))],
    responses={201: _answer("Stored, all of them (or earlier under this key)", BatchResult)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": msgspec.json.schema(BatchRequest)}},
        }
    },
)
async def publish_batch(request: Request, idempotency_key: str | None = KEY_HEADER) -> Response:
    """Several events for one aggregate, stored atomically: all of them or none. With an
    `Idempotency-Key` the events' ids are `<key>.1`, `<key>.2`, ..."""
    body = await read_body(request)
    try:
        batch = _decode_batch(body)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    state = request.app.state
    validate_token(batch.domain, "domain")
    validate_token(batch.id, "aggregate id")
    for item in batch.events:
        event = validate_token(item.event, "event")
        permit(request.state.principal, "write", f"{batch.domain}.{batch.id}.{event}")
    who = request.state.principal.name
    await charge(state.publish_buckets, who, len(batch.events))
    key = (
        None
        if idempotency_key is None
        else IdempotencyRecords.check_key(idempotency_key, "Idempotency-Key")
    )
    events = [
        _event(
            _event_type(state, batch.domain, validate_token(item.event, "event")),
            item.data,
        )
        for item in batch.events
    ]
    ids = None if key is None else [f"{key}.{n}" for n in range(1, len(events) + 1)]

    async def attempt(takeover: bool) -> bytes:
        if takeover and ids:
            subject = f"{batch.domain}.{batch.id}.{batch.events[0].event}"
            found = await stored_earlier(state, subject, f"{batch.domain}.{batch.id}.*", ids)
            if found:  # (an atomic batch: all of it)
                stored = [Published(m.event_id, m.stream, m.seq) for m in found]
                return _encode(BatchResult(found[-1].stream, found[-1].seq, stored))
        appended = await EventStore(state.bus).append(
            batch.domain, batch.id, events, expected_version=batch.expected_version, event_ids=ids
        )
        expect_reads(state, appended.stream, appended.events[-1].seq)
        out = BatchResult(
            appended.stream,
            appended.version,
            [Published(r.event_id, r.stream, r.seq) for r in appended.events],
        )
        return _encode(out)

    with state.bus.telemetry.continuing(request.headers), acting_as(who):
        if key is None:
            return created(Answer(await attempt(False), False))
        return created(await once(state, key, batch_request(batch), attempt))
