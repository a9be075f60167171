"""Which subjects a stream captures, as JetStream answers it: the publisher asks after "no
responders" (a stream between leaders: what it captures is sent again; a subject nothing
captures is refused at once), a handler's rerun for the stream it publishes to."""

from __future__ import annotations

import msgspec
import nats.errors

from ._nats.connection import Connection


def capture_filter(subject: str) -> str:
    """What to ask JetStream about a subject: one question per event type
    (`<domain>.*.<event>`), not one per aggregate."""
    tokens = subject.split(".")
    return f"{tokens[0]}.*.{tokens[2]}" if len(tokens) == 3 else subject


async def captured(nc: Connection, filters: set[str], within: float) -> set[str]:
    """Those of `filters` a stream captures, asked once each, never past `within` seconds
    (all of them when JetStream itself is busy electing: they go again)."""
    out: set[str] = set()
    for subject in filters:
        try:
            answer = await nc.request(
                "$JS.API.STREAM.NAMES",
                msgspec.json.encode({"subject": subject}),
                timeout=min(1.0, max(within, 0.05)),
            )
        except nats.errors.Error:
            return filters
        if msgspec.json.decode(answer.data).get("streams"):
            out.add(subject)
    return out
