"""The live tail: `GET /events?subject=PATTERN&from_seq=N` as Server-Sent Events, and
`GET /ws` (WebSocket) with the same filter.

Each event's stream sequence is its SSE id (and `seq` in a WebSocket message), so a client
that reconnects with `Last-Event-ID` (or `from_seq`) resumes exactly after it. Memory per
client is bounded: `Bus.tail` reads one page at a time at the client's pace. A WebSocket
client that stops reading for `slow_client_timeout` seconds is told (close code 1013, with
the sequence to resume from) and disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse

from bus import Bus, BusError, StoredMessage, validate_pattern

from .auth import Unauthorized, refusal, require
from .permissions import permit_tail, reader

router = APIRouter(tags=["tail"])
CLOSE_GRACE = 5.0  # how long a slow client has to take the close frame before the socket goes


def _data(bus: Bus, message: StoredMessage) -> object:
    try:
        return msgspec.to_builtins(bus.open(message).event)
    except BusError:
        return {"undecodable": message.data.decode(errors="replace")}


def _by(message: StoredMessage) -> dict[str, str]:
    """Who published it through an edge (Bus-Principal), when anyone did."""
    principal = message.headers.get("Bus-Principal")
    return {"principal": principal} if principal else {}


def _frame(bus: Bus, message: StoredMessage) -> str:
    event_type = message.headers.get("Bus-Event-Type", "message")
    payload = json.dumps(
        {"subject": message.subject, "data": _data(bus, message)} | _by(message),
        ensure_ascii=False,
    )
    return f"id: {message.seq}\nevent: {event_type}\ndata: {payload}\n\n"


def _ws_message(bus: Bus, message: StoredMessage) -> str:
    return json.dumps(
        {
            "seq": message.seq,
            "subject": message.subject,
            "type": message.headers.get("Bus-Event-Type", "message"),
            "data": _data(bus, message),
        }
        | _by(message),
        ensure_ascii=False,
    )


@router.get(
    "/events",
    dependencies=[Depends(require("read", narrowed=True))],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def tail(
    request: Request,
    subject: str = Query(..., max_length=256, description="A subject pattern, e.g. tasks.>"),
    from_seq: int | None = Query(None, ge=1),
    last_event_id: str | None = Header(None, max_length=20),
) -> StreamingResponse:
    """Events on `subject` from `from_seq` (or after `Last-Event-ID`), then live ones."""
    validate_pattern(subject)
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise HTTPException(400, "Last-Event-ID must be a stream sequence")
        from_seq = int(last_event_id) + 1
    bus: Bus = request.app.state.bus
    stream = await bus.stream_for(subject)  # 404 before the stream starts, not inside it
    permit_tail(request.app.state, request.state.principal, subject, stream)

    async def frames() -> AsyncIterator[str]:
        messages = bus.tail(subject, from_seq)
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield _frame(bus, message)

    return StreamingResponse(
        frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.websocket("/ws")
async def ws_tail(
    websocket: WebSocket,
    subject: str = Query(..., max_length=256),
    from_seq: int | None = Query(None, ge=1),
) -> None:
    """Events on `subject` from `from_seq`, then live ones, one JSON text message each."""
    state = websocket.app.state
    bus: Bus = state.bus
    try:
        validate_pattern(subject)
        who = await reader(state, websocket.headers.get("authorization"), subject)
        permit_tail(state, who, subject, await bus.stream_for(subject))
    except Unauthorized as exc:  # refused at the handshake, as HTTP refuses (401 or 403)
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(refusal(exc))
        else:
            await websocket.close(code=1008, reason=exc.detail[:120])
        return
    except BusError as exc:  # refused at the handshake (HTTP 403)
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    await websocket.accept()
    sending = asyncio.current_task()
    assert sending is not None

    async def watch_for_disconnect() -> None:
        """Nothing is expected from the client; its going away ends the tail at once."""
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        sending.cancel()

    watcher = asyncio.create_task(watch_for_disconnect())
    messages = bus.tail(subject, from_seq)
    try:
        async with contextlib.aclosing(messages):
            async for message in messages:
                try:
                    await asyncio.wait_for(
                        websocket.send_text(_ws_message(bus, message)), state.slow_client_timeout
                    )
                except TimeoutError:  # nothing of this message was written: resume from it
                    reason = f"too slow: reconnect with from_seq={message.seq}"
                    with contextlib.suppress(Exception):  # else uvicorn closes the socket
                        await asyncio.wait_for(websocket.close(1013, reason), CLOSE_GRACE)
                    return
    except asyncio.CancelledError:
        if not watcher.done():  # cancelled from outside (shutdown), not by the watcher
            raise
        sending.uncancel()
    finally:
        watcher.cancel()
