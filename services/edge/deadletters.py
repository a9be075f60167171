"""Dead letters over HTTP: list them per stream, replay one or all, discard one.

    GET    /api/v1/streams/{name}/dead-letters?from_seq=&limit=   reason, attempts' consumer,
                                                                   original subject and seq
    POST   /api/v1/streams/{name}/dead-letters/{seq}:replay        republish to its subject
    POST   /api/v1/streams/{name}/dead-letters:replay              every one, oldest first
    POST   /api/v1/streams/{name}/dead-letters/{seq}:discard       given up on, on purpose

What `bus dlq` does, for the console and any client; replays and discards need `write`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from bus import Bus, DeadLetter, PublishError, PublishResult, StreamNotFound, validate_token

from .auth import require
from .permissions import permit_dead_letters
from .stream_reads import MAX_SEQ

router = APIRouter(prefix="/api/v1/streams", tags=["dead letters"])
read = [Depends(require("read", narrowed=True))]  # the dead-letter stream's own subjects
write = [Depends(require("write"))]
MAX_REPLAY = 1000  # dead letters one replay-all request republishes
ATTEMPTS = re.compile(r"^handler failed (\d+) times")  # the consumer's reason says how many


def _json(data: Any) -> Response:
    return Response(msgspec.json.encode(data), media_type="application/json")


def _shown(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON: its payload as text (it may not decode: that may be why)."""
    shown: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(letter, data=b""))
    attempts = ATTEMPTS.match(letter.reason)
    return shown | {
        "data": letter.data.decode(errors="replace"),
        "attempts": int(attempts.group(1)) if attempts else None,
    }


async def _replay(bus: Bus, name: str, seq: int) -> dict[str, Any]:
    """Replay one; 409 while the stream would still drop it as a duplicate (try again)."""
    try:
        result: PublishResult = await bus.replay(name, seq)
    except PublishError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"subject": result.subject, "stream": result.stream, "seq": result.seq}


async def _letters(bus: Bus, name: str, from_seq: int, limit: int) -> list[DeadLetter]:
    validate_token(name, "stream")
    try:
        return await bus.dead_letters(name, from_seq, limit)
    except StreamNotFound:
        await bus.streams.info(name)  # 404 when the stream itself is unknown
        return []  # a stream that never dead-lettered anything


@router.get("/{name}/dead-letters", dependencies=read)
async def list_dead_letters(
    request: Request,
    name: str,
    from_seq: int = Query(1, ge=1, le=MAX_SEQ),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    """Dead letters of stream `name` from `from_seq`; `next_seq` pages on. A caller limited
    to patterns needs them to cover the dead-letter stream's subjects (`dlq.<NAME>.>`): a
    permitted stream's dead letters are another stream."""
    validate_token(name, "stream")
    await permit_dead_letters(request.app.state, request.state.principal, name)
    letters = await _letters(request.app.state.bus, name, from_seq, limit)
    next_seq = letters[-1].seq + 1 if len(letters) == limit else None
    return _json({"items": [_shown(d) for d in letters], "next_seq": next_seq})


@router.post("/{name}/dead-letters/{seq}:replay", dependencies=write)
async def replay_one(request: Request, name: str, seq: int = Path(ge=1, le=MAX_SEQ)) -> Response:
    """Republish dead letter `seq` to its original subject and remove it."""
    validate_token(name, "stream")
    return _json(await _replay(request.app.state.bus, name, seq))


@router.post("/{name}/dead-letters:replay", dependencies=write)
async def replay_all(request: Request, name: str) -> Response:
    """Republish every dead letter of `name` (up to MAX_REPLAY), oldest first."""
    bus: Bus = request.app.state.bus
    letters = await _letters(bus, name, 1, MAX_REPLAY)
    return _json({"replayed": [await _replay(bus, name, d.seq) for d in letters]})


@router.post("/{name}/dead-letters/{seq}:discard", status_code=204, dependencies=write)
async def discard(request: Request, name: str, seq: int = Path(ge=1, le=MAX_SEQ)) -> Response:
    """Delete dead letter `seq` without replaying it."""
    validate_token(name, "stream")
    await request.app.state.bus.discard(name, seq)
    return Response(status_code=204)
