"""Ids for the events a handler publishes, derived from the message it handles, so that a
handler run twice for one message (its process died before the ack, the server restarted)
stores what it publishes once.

An id is a hash of the consumer (stream, durable), the handled message (stream sequence and
event id), its failure epoch, the event's subject and how many events this run published on
that subject before it. A rerun that publishes the same events in the same order gets the
same ids, and JetStream's `Nats-Msg-Id` dedupe drops them. The failure epoch (bus._attempts)
is the last attempt that failed cleanly (the handler raised): a retry after an exception is
a new epoch whose events are new facts, a rerun after a crash repeats its epoch's ids.

Counting per subject, not over the whole run, keeps a rerun that takes another branch (the
demo's handler completes on the attempt after a crash where it would have failed) from
reusing an id for a different event, which dedupe would silently drop.

Only single-message handlers get derived ids. A first delivery's run is made by its first
publish; tasks the handler starts share it (it hangs on the message, which their contexts
hold), so what they publish is counted too, even after the handler returned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from hashlib import blake2b
from typing import Protocol

from ._envelope import Envelope, current_envelope
from ._events import Event


class Run:
    """One run of a handler on one message: what it has published so far, by subject."""

    __slots__ = ("counts", "rerun_since", "seed")

    def __init__(self, seed: str, rerun_since: int = 0) -> None:
        self.seed = seed
        # When a run before this one may have published under its ids: the time the handled
        # message was stored (ns since the epoch, the server's clock); 0 when none did.
        self.rerun_since = rerun_since
        self.counts: dict[str, int] = {}

    def next_id(self, subject: str) -> str:
        n = self.counts.get(subject, 0)
        self.counts[subject] = n + 1
        return derived_id(self.seed, subject, n)


class HandledMessage(Protocol):
    """What a consumer hands a single-message handler's context: its message, with a slot."""

    run: Run | None


class Handling:
    """The consumer whose handlers publish: the first part of every id they derive."""

    __slots__ = ("prefix",)

    def __init__(self, stream: str, durable: str) -> None:
        self.prefix = f"{stream}\x1f{durable}"

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Handlers started (their contexts copied) inside this block derive ids from us,
        and from no message but their own (even when started inside another handler)."""
        token, outer = _handling.set(self), handled_message.set(None)
        try:
            yield
        finally:
            handled_message.reset(outer)
            _handling.reset(token)

    def run(self, envelope: Envelope[Event], epoch: int, rerun_since: int = 0) -> Run:
        return Run(f"{self.prefix}\x1f{envelope.seq}\x1f{envelope.id}\x1f{epoch}", rerun_since)


_handling: ContextVar[Handling | None] = ContextVar("bus_handling", default=None)
# Set by the consumer for each single-message handler (in the job's own context copy).
handled_message: ContextVar[HandledMessage | None] = ContextVar("bus_handled", default=None)


def current_run() -> Run | None:
    """The run of the single-message handler publishing now, if any (made on first use)."""
    message = handled_message.get()
    if message is None:
        return None
    run = message.run
    if run is None:
        handling, envelope = _handling.get(), current_envelope.get()
        if handling is None or envelope is None:
            return None
        run = message.run = handling.run(envelope, 0)
    return run


def derived_id(seed: str, subject: str, n: int) -> str:
    """A UUIDv8 (RFC 9562: made by our own rule) from a hash of the run's seed, the subject and
    the event's place among the run's events on that subject."""
    raw = bytearray(blake2b(f"{seed}\x1f{subject}\x1f{n}".encode(), digest_size=16).digest())
    raw[6] = raw[6] & 0x0F | 0x80  # version 8
    raw[8] = raw[8] & 0x3F | 0x80  # variant 10
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
