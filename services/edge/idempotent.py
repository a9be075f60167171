"""Requests made with an `Idempotency-Key` (the IETF httpapi draft's behaviour), for a day.

The same key with the same request (subject, body, If-Match) answers the first result again,
marked `Idempotent-Replayed: true`; with another request, 422; while the first is in flight,
409. Keys are global, not per API key: a key is also the event id (`Nats-Msg-Id`), which is
one per stream whoever publishes. A request refused without storing anything (a version
conflict, an event JetStream refused) keeps no record, so the same request runs again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from fastapi import HTTPException
from starlette.datastructures import State

from bus import (
    BusError,
    Claim,
    ConcurrencyError,
    ConfigError,
    IdempotencyRecords,
    InFlight,
    Mismatch,
    NoStreamForSubject,
    PublishError,
    Replay,
    StoredMessage,
    matches,
)

log = logging.getLogger("bus.edge")
REPLAYED = "Idempotent-Replayed"
# Refusals that mean nothing was stored: the claim is released, not left pending.
STORED_NOTHING = (ConcurrencyError, PublishError, ConfigError, NoStreamForSubject)


class Answer(NamedTuple):
    body: bytes  # the JSON result
    replayed: bool  # the first request's, answered again


async def once(
    state: State, key: str, request: str, attempt: Callable[[bool], Awaitable[bytes]]
) -> Answer:
    """`attempt(takeover)` once for `key` (fingerprint `request`), or the first result.

    `takeover` is true when an earlier attempt was abandoned mid-flight: the attempt looks
    for what it stored (`stored_earlier`) before publishing again."""
    outcome = await state.idempotency.begin(key, request)
    if isinstance(outcome, Replay):
        return Answer(outcome.result, True)
    if isinstance(outcome, InFlight):
        raise HTTPException(
            409,
            f"a request with this Idempotency-Key is in flight (for {outcome.age:.1f}s)",
            headers={"Retry-After": "1"},
        )
    if isinstance(outcome, Mismatch):
        raise HTTPException(
            422, "this Idempotency-Key was used for another request (subject, body or If-Match)"
        )
    claim: Claim = outcome
    try:
        body = await attempt(claim.takeover)
    except STORED_NOTHING:
        await state.idempotency.release(claim)
        raise
    # Anything else (a timeout, NATS gone) may have stored the event: the record stays
    # pending, and a retry takes it over once it is stale.
    try:
        await state.idempotency.finish(claim, body)
    except BusError as exc:  # stored all the same; a retry takes over and finds it
        log.warning("idempotency key %r: result not recorded: %s", key, exc)
    return Answer(body, False)


async def stored_earlier(
    state: State, subject: str, subjects: str, event_ids: Sequence[str]
) -> list[StoredMessage]:
    """What an abandoned attempt stored under `event_ids` on `subjects` (the stream of
    `subject`); empty when it stored nothing, or no stream of the app takes `subject`."""
    for spec in state.app.streams:
        if any(matches(pattern, subject) for pattern in spec.subjects):
            records: IdempotencyRecords = state.idempotency
            return await records.find_stored(spec.name, subjects, event_ids)
    return []
