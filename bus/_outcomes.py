"""What becomes of a delivered message besides an ack: handed back with a backoff after a
failure, or copied to the dead-letter stream and terminated; and, before a redelivery's
handler runs, the failure epoch its follow-up events take their ids from (bus._followups).
"""

from __future__ import annotations

import logging

import msgspec

from ._attempts import AttemptRecord
from ._deadletter import dead_letter_message
from ._delivery import Delivery
from ._envelope import Envelope
from ._errors import BusError, OutboundBufferFull
from ._events import Event
from ._followups import Handling
from ._nats.connection import Connection
from ._nats.deliveries import sequence_and_delivered, stored_at
from ._publish import Publisher
from ._subscribe import HandlerSpec
from ._telemetry import Telemetry

log = logging.getLogger("bus.consumer")
TERM = b"+TERM"
_encode = msgspec.json.Encoder().encode


def settle(nc: Connection, msg: Delivery, verb: bytes) -> None:
    """Ack, nak or term; a settle lost to a disconnect means a redelivery, never a loss."""
    try:  # noqa: SIM105 (not contextlib.suppress: this runs once per message)
        nc.reply(msg.reply, verb)
    except OutboundBufferFull:
        pass


class Outcomes:
    """One consumer's failures and dead letters (`dead_lettered` counts the latter)."""

    def __init__(
        self,
        nc: Connection,
        publisher: Publisher,
        spec: HandlerSpec,
        stream: str,
        telemetry: Telemetry,
        attempts: AttemptRecord,
        handling: Handling,
    ) -> None:
        self._nc, self._publisher, self._spec, self._stream = nc, publisher, spec, stream
        self._telemetry, self._attempts, self._handling = telemetry, attempts, handling
        self.dead_lettered = 0

    async def resume(self, msg: Delivery, env: Envelope[Event]) -> bool:
        """Before a redelivery's handler runs: its failure epoch, read from the attempts
        record. False (and a nak) when that cannot be read now: running it without would
        give its events ids of another epoch."""
        assert env.seq is not None
        try:
            epoch = await self._attempts.epoch(env.seq)
        except BusError as exc:
            delay = self._spec.backoff.delay(env.attempt)
            log.warning(
                "consumer %s: the failure epoch of %s seq %d is unreadable, retry in %.2fs: %s",
                self._spec.durable, self._stream, env.seq, delay, exc,
            )  # fmt: skip
            self._settle(msg, b"-NAK " + _encode({"delay": int(delay * 1e9)}))
            return False
        # Right after a clean failure (epoch = the attempt before) no run has used this
        # epoch's ids yet; otherwise runs since the message was stored may have.
        since = 0 if epoch == env.attempt - 1 else stored_at(msg.reply)
        msg.run = self._handling.run(env, epoch, since)
        return True

    async def failed(self, msg: Delivery, attempt: int, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if attempt >= self._spec.max_deliver:
            await self.dead_letter(msg, f"handler failed {attempt} times; last: {reason}")
            return
        delay = self._spec.backoff.delay(attempt)
        log.warning(
            "handler %s failed (attempt %d/%d), retry in %.2fs: %s",
            self._spec.durable, attempt, self._spec.max_deliver, delay, reason,
        )  # fmt: skip
        self._settle(msg, b"-NAK " + _encode({"delay": int(delay * 1e9)}))

    async def dead_letter(self, msg: Delivery, reason: str) -> None:
        """Copy to the dead-letter stream, then terminate; if the copy fails, retry later."""
        stream_seq, _ = sequence_and_delivered(msg.reply)
        out = dead_letter_message(
            self._stream, stream_seq, msg.subject, msg.data, msg.headers, self._spec.durable, reason
        )
        try:
            await self._publisher.send(out)
        except BusError as exc:
            log.error(
                "dead-lettering %s seq %d failed, will retry: %s", self._stream, stream_seq, exc
            )
            self._settle(msg, b"-NAK " + _encode({"delay": int(5e9)}))
            return
        self.dead_lettered += 1
        self._telemetry.dead_lettered(self._stream, self._spec.durable, reason)
        log.error("dead-lettered %s seq %d: %s", self._stream, stream_seq, reason)
        self._settle(msg, TERM)

    def _settle(self, msg: Delivery, verb: bytes) -> None:
        settle(self._nc, msg, verb)
