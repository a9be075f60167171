"""Runs as one orchestrator instance last saw them, so deciding reads only a history's tail.

A run's history only grows, so its state folded up to sequence `seq` stays true of that
prefix: the next decision reads the events after `seq` (most often one or two of a worker's)
instead of the whole run, and decodes and folds only those. Right after appending its own
decisions the instance knows the run exactly up to them, and the trigger that starts a run is
its whole history: those decide without reading at all, and a refused append (something moved
since) sends them back to reading the tail. With each run it keeps the ids of the tasks it
sent, so a parallel step's outcome does not send its sibling's task again (after a restart,
or for a run not kept, they are sent again and JetStream stores them once). Bounded; a
finished run is dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ._envelope import Envelope, now_rfc3339
from ._events import Event
from ._store import EventStore
from ._workflow_events import (
    DOMAIN,
    RunView,
    StepCompleted,
    StepFailed,
    apply_run,
    load_run,
    scheduled_inputs,
)

SIZE = 10_000  # runs remembered per instance (least recently decided dropped first)


class Known:
    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._runs: OrderedDict[str, tuple[RunView, dict[str, Any]]] = OrderedDict()
        self._sent: dict[str, set[str]] = {}  # per run kept: the ids of the tasks sent

    def remember(self, run: RunView, inputs: dict[str, Any]) -> None:
        """Keep `run` (with its steps' scheduled inputs) unless a later state is kept."""
        if run.finished:
            self.forget(run.run_id)
            return
        kept = self._runs.get(run.run_id)
        if kept is None or kept[0].seq < run.seq:
            self._runs[run.run_id] = (run, inputs)
        self._runs.move_to_end(run.run_id)
        while len(self._runs) > self.size:
            self._sent.pop(self._runs.popitem(last=False)[0], None)

    def sent(self, run_id: str) -> set[str]:
        """The ids of the tasks this instance sent for the run: another trigger of it (a
        parallel step's outcome) need not send them again. Not kept: none (send them all)."""
        if run_id not in self._runs:
            return set()
        return self._sent.setdefault(run_id, set())

    def follow(self, run_id: str, envelope: Envelope[Event]) -> bool:
        """Whether a worker's outcome makes the run known whole: it was appended right after
        what is kept (then it is folded in)."""
        kept, event = self._runs.get(run_id), envelope.event
        if kept is None or not isinstance(event, StepCompleted | StepFailed):
            return False
        if not event.after or event.after != kept[0].seq:
            return False
        self.remember(apply_run(kept[0], envelope), kept[1])
        return True

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self._sent.pop(run_id, None)

    def get(self, run_id: str) -> tuple[RunView, dict[str, Any]] | None:
        return self._runs.get(run_id)

    async def read(
        self, store: EventStore, run_id: str, origin: int
    ) -> tuple[RunView, dict[str, Any]]:
        """The run now and its steps' inputs: the tail after what is kept, or all of it."""
        kept = self._runs.get(run_id)
        if kept is None:
            history, run = await load_run(store, run_id, origin)
            inputs: dict[str, Any] = {}
            events = history.events
        else:
            run, inputs = kept
            inputs = dict(inputs)
            events = (await store.load(DOMAIN, run_id, since=run.seq)).events
            for envelope in events:
                run = apply_run(run, envelope)
        for envelope in events:
            inputs.update(scheduled_inputs(envelope.event))
        if run.run_id:
            self.remember(run, inputs)
        return run, inputs


def as_envelope(event: Event, run_id: str, seq: int) -> Envelope[Event]:
    """An event known to be stored at `seq`, as the fold sees a stored one."""
    subject = f"{DOMAIN}.{run_id}.{event.__event_name__}"
    return Envelope(
        event=event, id="", subject=subject, occurred_at=now_rfc3339(), correlation_id="", seq=seq
    )
