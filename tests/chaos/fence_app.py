"""An app whose fold takes 2 ms an event (a blocking pause, as real work would take), for the
fencing test (`--app tests.chaos.fence_app:app`): a batch of 500 folds for a second, so a
projector paused at a random moment is almost surely in the middle of one."""

from __future__ import annotations

import time

import msgspec

from bus import App, Envelope, Event, Projection, StreamSpec

FOLD_SECONDS = 0.002


class Bumped(Event):
    __domain__ = "fence"
    __event_name__ = "bumped"
    n: int


class Tally(msgspec.Struct):
    count: int = 0
    last: int = 0  # the stream sequence of the last event folded


def bump(state: Tally, envelope: Envelope[Event]) -> Tally:
    time.sleep(FOLD_SECONDS)
    return Tally(state.count + 1, envelope.seq or 0)


app = App(
    "fence",
    streams=[StreamSpec.for_domain("fence")],
    events=[Bumped],
    projections=[Projection("bumps", ("fence.>",), Tally, lambda e: e.subject.split(".")[1], bump)],
)
