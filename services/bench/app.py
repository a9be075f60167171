"""The app `bus bench --scenario http` runs: the demo, plus `created`, a projection reading
one event type of the stream, so read-your-writes is also timed where the last write is not
one of the projection's events."""

from __future__ import annotations

import msgspec

from bus import App, Envelope, Event, Projection
from services.demo import app as demo


class Created(msgspec.Struct):
    count: int = 0


def count(state: Created, envelope: Envelope[Event]) -> Created:
    return Created(state.count + 1)


app = App(
    "tasks",
    streams=demo.streams,
    events=list(demo.registry),
    router=demo.router,
    projections=[
        *demo.projections.values(),
        Projection("created", ("tasks.*.created",), Created, lambda e: "all", count),
    ],
)
