"""Appending several events all or none: one JetStream atomic batch.

Every message but the last goes out unacknowledged with the batch's id and place; the last
commits it, and only it is acknowledged. Consistency headers on the first message guard the
whole batch, which is stored contiguously (the stream needs `allow_atomic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from . import _headers as h
from . import _telemetry as telemetry
from ._errors import BusError, ConcurrencyError, ConfigError, PublishError
from ._events import new_event_id
from ._nats.acks import PublishResult
from ._nats.connection import Connection
from ._nats.wire import Outgoing, encode_headers
from ._reruns import Reruns

MAX_ATOMIC_BATCH = 1000  # nats-server's default limit on one atomic batch


class Sends(Protocol):
    """What sends the commit (the Publisher)."""

    timeout: float

    async def send(self, out: Outgoing, timeout: float | None = None) -> PublishResult: ...


async def send_atomic(
    publisher: Sends,
    nc: Connection,
    reruns: Reruns,
    outs: Sequence[Outgoing],
    timeout: float | None = None,
) -> list[PublishResult]:
    """All or none, as one JetStream atomic batch (the stream needs `allow_atomic`).

    Consistency headers on the first message guard the whole batch; only the commit
    (last) message is acknowledged, and the batch is stored contiguously.
    """
    if not 1 <= len(outs) <= MAX_ATOMIC_BATCH:
        raise ConfigError(f"an atomic batch holds 1 to {MAX_ATOMIC_BATCH} events")
    if len(outs) == 1:
        return [await publisher.send(outs[0], timeout)]
    wait = publisher.timeout if timeout is None else timeout
    if outs[0].rerun_since and (stored := await reruns.batch(outs, wait)):
        return stored
    batch_id = new_event_id()
    for i, out in enumerate(outs[:-1], 1):
        block = encode_headers({**out.headers, h.BATCH_ID: batch_id, h.BATCH_SEQ: str(i)})
        if len(block) + len(out.payload) > nc.max_payload:
            raise PublishError(out.subject, "maximum payload exceeded")
        await nc.send(out.subject, out.payload, "", block)
    last = outs[-1]
    commit = {**last.headers, h.BATCH_ID: batch_id, h.BATCH_SEQ: str(len(outs))}
    commit[h.BATCH_COMMIT] = "1"
    try:
        acked = await publisher.send(
            Outgoing(last.subject, last.payload, commit, last.event_id, last.span), timeout
        )
    except BusError as exc:
        if outs[0].rerun_since and (stored := await reruns.refused(outs, wait, exc)):
            return stored  # an earlier run of the handler stored this batch
        for out in outs[:-1]:
            if out.span is not None:
                telemetry.end_publish(out.span, error=exc)
        if isinstance(exc, ConcurrencyError):  # the commit reports what the first asked
            expected = int(outs[0].headers.get(h.EXPECTED_LAST_SUBJECT_SEQ, "0"))
            raise ConcurrencyError(outs[0].subject, expected, exc.actual) from None
        raise
    first = acked.seq - len(outs) + 1
    results = [
        PublishResult(out.event_id, out.subject, acked.stream, first + i)
        for i, out in enumerate(outs)
    ]
    for out, result in zip(outs[:-1], results, strict=False):
        if out.span is not None:
            telemetry.end_publish(out.span, result.stream, result.seq)
    return results
