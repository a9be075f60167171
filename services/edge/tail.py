"""`GET /events?subject=PATTERN&from_seq=N`: the live tail as Server-Sent Events.

Each event's stream sequence is its SSE id, so a client that reconnects with `Last-Event-ID`
resumes exactly after it. Memory per client is bounded: `Bus.tail` reads one page at a time
at the client's pace, so a slow reader is slowed down, never given a gap.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from bus import Bus, BusError, StoredMessage
from bus.subjects import validate_pattern

from .auth import require

router = APIRouter(tags=["tail"])


def _frame(bus: Bus, message: StoredMessage) -> str:
    event_type = message.headers.get("Bus-Event-Type", "message")
    try:
        data: object = msgspec.to_builtins(bus.open(message).event)
    except BusError:
        data = {"undecodable": message.data.decode(errors="replace")}
    payload = json.dumps({"subject": message.subject, "data": data}, ensure_ascii=False)
    return f"id: {message.seq}\nevent: {event_type}\ndata: {payload}\n\n"


@router.get(
    "/events",
    dependencies=[Depends(require("read"))],
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
    await bus.stream_for(subject)  # 404 before the stream starts, not inside it

    async def frames() -> AsyncIterator[str]:
        messages = bus.tail(subject, from_seq)
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield _frame(bus, message)

    return StreamingResponse(
        frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
