"""Shared state over HTTP: `/api/v1/kv/{bucket}/{key}`, the key's revision as its ETag.

    GET    /api/v1/kv/{bucket}/{key}            the JSON value, `ETag: "<revision>"`; 404
    PUT    /api/v1/kv/{bucket}/{key}            write; `If-Match: "<revision>"` (or `*`: it
                                                exists) or `If-None-Match: *` (it does not),
                                                else 412 saying the current revision
    DELETE /api/v1/kv/{bucket}/{key}            204 (`If-Match` as for PUT); 404 if absent
    GET    /api/v1/kv                           the app's buckets
    GET    /api/v1/kv/{bucket}?prefix=&limit=&cursor=    live keys with values, paged
    GET    /api/v1/kv/{bucket}/{key}/history    the revisions kept, deletions included
    GET    /api/v1/kv/{bucket}:watch?key=&after_revision=   every change as Server-Sent
                                                Events, the revision as the event id

Only the buckets the App declares are reachable (the backbone's own never are). A caller
limited to patterns reaches the keys they cover as `$KV.<bucket>.<key>` (read: to read,
publish: to write; services/edge/grants.py). The MCP tools `get_state` and `set_state` share
the reads, writes and checks here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import State

from bus import Bucket, KeyEntry, KeyNotFound, RevisionMismatch

from .auth import require
from .events import read_body
from .grants import kv_name
from .limits import publish_limit
from .mcp_access import tool_caller, tool_writer
from .permissions import may_read_key, permit, permit_key, reaches
from .problems import PROBLEM, PROBLEM_SCHEMA, problem

router = APIRouter(prefix="/api/v1/kv", tags=["kv"])
read = [Depends(require("read", narrowed=True))]  # checked per key ($KV.<bucket>.<key>)
write = [Depends(require("write", narrowed=True))]  # charged once the key is permitted
REFUSED: dict[str, Any] = {
    "description": "Precondition Failed",
    "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}},
}
CONDITIONAL: dict[int | str, dict[str, Any]] = {412: REFUSED}
MAX_KEY = 256
ANY_JSON = {"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}}
Expected = int | str | None  # a revision, "*" (it exists), "" (it does not), None (no condition)


def bucket_of(state: State, name: str) -> Bucket[Any]:
    if name not in state.app.buckets:
        raise HTTPException(404, f"no bucket named {name!r}")
    bucket: Bucket[Any] = state.bus.bucket(name)
    return bucket


def _etag(revision: int) -> dict[str, str]:
    return {"ETag": f'"{revision}"'}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    encoded = msgspec.json.encode(data)
    return Response(encoded, status, headers, media_type="application/json")


def _entry(entry: KeyEntry[Any]) -> dict[str, Any]:
    return {"key": entry.key, "revision": entry.revision, "value": entry.value, "time": entry.time}


def parse_condition(if_match: str | None, if_none_match: str | None) -> Expected:
    """What a write's `If-Match` / `If-None-Match` ask; 400 when they ask nothing sensible."""
    if if_match is not None and if_none_match is not None:
        raise HTTPException(400, "send If-Match or If-None-Match, not both")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise HTTPException(400, "a write takes If-None-Match: * only (create if absent)")
        return ""
    if if_match is None:
        return None
    text = if_match.strip()
    if text == "*":
        return "*"
    if len(text) > 2 and text[0] == text[-1] == '"' and text[1:-1].isdigit():
        revision = int(text[1:-1])
        if revision >= 1:
            return revision
    raise HTTPException(400, 'If-Match must be a revision in quotes ("12") or *')


async def write_value(bucket: Bucket[Any], key: str, value: Any, expected: Expected) -> int:
    """Write `value` (checked against the bucket's type: 422) under the condition; the new
    revision. Refusals are the bus's errors (RevisionMismatch, KeyExists)."""
    try:
        value = bucket.convert(value)
    except ValueError as exc:
        raise HTTPException(422, f"not a value of bucket {bucket.name!r}: {exc}") from None
    if expected is None:
        return await bucket.put(key, value)
    if expected == "":
        return await bucket.create(key, value)
    if expected == "*":
        found = await bucket.get(key)
        if found is None:
            raise RevisionMismatch(bucket.name, key, 0, 0)
        expected = found.revision
    assert isinstance(expected, int)
    return await bucket.update(key, value, revision=expected)


def refused(exc: RevisionMismatch) -> Response:
    """412, saying the key's current revision (0: absent)."""
    detail = str(exc)
    return problem(412, "Precondition Failed", detail, current_revision=exc.current)


@router.get("", dependencies=read)
async def list_buckets(request: Request) -> Response:
    """The app's buckets: name, description, revisions kept per key, ttl."""
    who = request.state.principal
    specs = [
        b
        for b in request.app.state.app.buckets.values()
        if reaches(who, ("read", "publish"), kv_name(b.name, ">"))
    ]
    keep = ("name", "description", "history", "ttl")
    return _json([{field: getattr(spec, field) for field in keep} for spec in specs])


@router.get("/{bucket}:watch", dependencies=read, response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip
async def watch(
    request: Request,
    bucket: str,
    key: str = Query(">", max_length=MAX_KEY, description="A key, or a pattern (* and >)"),
    after_revision: int | None = Query(None, ge=0),
    last_event_id: str | None = Header(None, max_length=20),
) -> StreamingResponse:
    """Every change of `key` from after `after_revision` (or `Last-Event-ID`), else from now
    on: `event: put|delete|purge`, `id: <revision>`, data `{key, revision, value, time}`."""
    handle = bucket_of(request.app.state, bucket)
    permit_key(request.state.principal, "read", bucket, key)
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise HTTPException(400, "Last-Event-ID must be a revision")
        after_revision = int(last_event_id)
    if after_revision is None:
        after_revision = (await request.app.state.bus.streams.info(f"KV_{bucket}")).last_seq
    changes = handle.watch(key, after_revision=after_revision)  # a bad key: 400 here

    async def frames() -> AsyncIterator[str]:
        async with contextlib.aclosing(changes):
            async for entry in changes:
                data = json.dumps(_entry(entry), ensure_ascii=False)
                yield f"id: {entry.revision}\nevent: {entry.operation}\ndata: {data}\n\n"

    return StreamingResponse(
        frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/{bucket}", dependencies=read)
async def list_keys(
    request: Request,
    bucket: str,
    prefix: str = Query("", max_length=MAX_KEY),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=MAX_KEY),
) -> Response:
    """Live keys starting with `prefix` in key order, with values and revisions; the next
    page follows `next_cursor` (null on the last)."""
    handle, who = bucket_of(request.app.state, bucket), request.state.principal
    if not reaches(who, ("read",), kv_name(bucket, ">")):
        permit(who, "read", kv_name(bucket, ">"))  # refused: names what is missing
    page = await handle.keys(prefix, limit, cursor)
    items = [_entry(e) for e in page.items if may_read_key(who, bucket, e.key)]
    return _json({"bucket": bucket, "items": items, "next_cursor": page.next_cursor})


@router.get("/{bucket}/{key}", dependencies=read, responses={304: {"description": "Not Modified"}})
async def get_key(
    request: Request,
    bucket: str,
    key: str,
    if_none_match: str | None = Header(None, max_length=512),
) -> Response:
    """The key's JSON value, its revision as the ETag (304 for a matching If-None-Match)."""
    handle = bucket_of(request.app.state, bucket)
    permit_key(request.state.principal, "read", bucket, key)
    found = await handle.get(key)
    if found is None:
        raise HTTPException(404, f"bucket {bucket!r} has no key {key!r}")
    etag = _etag(found.revision)
    if if_none_match is not None and etag["ETag"] in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=etag)
    return _json(found.value, headers={**etag, "Cache-Control": "no-cache"})


@router.put("/{bucket}/{key}", dependencies=write, responses=CONDITIONAL, openapi_extra=ANY_JSON)
async def put_key(
    request: Request,
    bucket: str,
    key: str,
    if_match: str | None = Header(None, max_length=24),
    if_none_match: str | None = Header(None, max_length=24),
) -> Response:
    """Write the JSON body; conditional with If-Match / If-None-Match: * (412 otherwise)."""
    handle = bucket_of(request.app.state, bucket)
    permit_key(request.state.principal, "write", bucket, key)
    await publish_limit(request)
    expected = parse_condition(if_match, if_none_match)
    body = await read_body(request)
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(400, "the body is JSON nested too deeply") from None
    try:
        revision = await write_value(handle, key, value, expected)
    except RevisionMismatch as exc:
        return refused(exc)
    return _json({"bucket": bucket, "key": key, "revision": revision}, headers=_etag(revision))


@router.delete("/{bucket}/{key}", status_code=204, dependencies=write, responses=CONDITIONAL)
async def delete_key(
    request: Request, bucket: str, key: str, if_match: str | None = Header(None, max_length=24)
) -> Response:
    """Delete the key (only at the If-Match revision, when sent); its history keeps it."""
    handle = bucket_of(request.app.state, bucket)
    permit_key(request.state.principal, "write", bucket, key)
    await publish_limit(request)
    expected = parse_condition(if_match, None)
    try:
        if expected == "*":
            await handle.delete(key)
        else:
            await handle.delete(key, revision=expected if isinstance(expected, int) else None)
    except KeyNotFound:
        raise HTTPException(404, f"bucket {bucket!r} has no key {key!r}") from None
    except RevisionMismatch as exc:
        return refused(exc)
    return Response(status_code=204)


@router.get("/{bucket}/{key}/history", dependencies=read)
async def key_history(request: Request, bucket: str, key: str) -> Response:
    """The revisions the bucket keeps of the key, oldest first, with `operation`."""
    handle = bucket_of(request.app.state, bucket)
    permit_key(request.state.principal, "read", bucket, key)
    history = await handle.history(key)
    if not history:
        raise HTTPException(404, f"bucket {bucket!r} has no key {key!r}")
    entries = [{**_entry(e), "operation": e.operation} for e in history]
    return _json({"bucket": bucket, "key": key, "history": entries})


def mcp_tools(state: State) -> list[Callable[..., Awaitable[Any]]]:
    """`get_state` and `set_state` for the MCP server."""

    async def get_state(bucket: str, key: str) -> Any:
        """One key of a shared-state bucket: {bucket, key, revision, value}."""
        who = tool_caller()
        handle = bucket_of(state, bucket)
        permit_key(who, "read", bucket, key)
        found = await handle.get(key)
        if found is None:
            raise HTTPException(404, f"bucket {bucket!r} has no key {key!r}")
        return {"bucket": bucket, "key": key, "revision": found.revision, "value": found.value}

    async def set_state(
        bucket: str, key: str, value: Any, expected_revision: int | None = None
    ) -> Any:
        """Write a key's JSON value. With expected_revision, only if the key is at that
        revision (0: only if it is absent); else refused, saying the current revision."""
        handle = bucket_of(state, bucket)
        permit_key(tool_caller(), "write", bucket, key)
        await tool_writer(state)
        if expected_revision is not None and expected_revision < 0:
            raise HTTPException(422, "expected_revision must be >= 0 (0: the key is absent)")
        expected: Expected = "" if expected_revision == 0 else expected_revision
        try:
            revision = await write_value(handle, key, value, expected)
        except RevisionMismatch as exc:
            raise HTTPException(412, f"{exc} (current revision {exc.current})") from None
        return {"bucket": bucket, "key": key, "revision": revision}

    return [get_state, set_state]
