"""The app `bus bench --scenario http` runs: the demo, plus `failures`, a projection reading
one event type of the stream, so read-your-writes is also timed where the last write is not
one of the projection's events. It reads `failed`, which none of the timed writes causes
(their tasks never fail), so it adds no work to the other cases' writes."""

from __future__ import annotations

import msgspec

from bus import App, Envelope, Event, Projection
from services.demo import app as demo


class Failures(msgspec.Struct):
    count: int = 0


def count(state: Failures, envelope: Envelope[Event]) -> Failures:
    return Failures(state.count + 1)


app = App(
    "tasks",
    streams=demo.streams,
    events=list(demo.registry),
    router=demo.router,
    projections=[
        *demo.projections.values(),
        Projection("failures", ("tasks.*.failed",), Failures, lambda e: "all", count),
    ],
)
