"""Deciding what follows in a run, from its history alone, by whoever recorded the last of it.

`decide` is pure: from a run's state, all the events that follow now (none: nothing to do
now). `advance` records them one at a time, each conditional on the run's last sequence.
Who calls it: the starter after a run's start, a worker after its outcome
(bus._workflow_tasks), and the orchestrator, a handler on the records nobody else decides
on: a start whose first step could not be scheduled, a cancel request, and outcomes recorded
by a worker that does not declare the run's workflow (`decide`). One durable consumer per
app, so any number of instances share that work.

If anything else was appended meanwhile (an outcome of a parallel step, another instance's
decision), JetStream refuses the append (ConcurrencyError) and it reads what came since and
decides again. That condition IS the fencing: two deciders, or a rerun after a kill -9
between an append and its message's ack, never record a decision twice, because the second
decides on a history that already holds the first's. A decider killed before it could
decide leaves its message unacknowledged: the rerun decides.

Rules: a step whose dependencies all completed is scheduled (all such at once: they run in
parallel; one record per action, since a record is its action's task); a failed attempt
with retries left is scheduled again after its backoff; once a step has failed for good
nothing new starts, the steps not scheduled are skipped, and when none is running the
completed steps with `compensate=` are compensated one at a time in reverse dependency
order, then the run fails; a cancel request stops what is in flight (the workers stop its
handlers and drop their outcomes), compensates the completed steps the same way, then
cancels the run. The decider recording a run's end tells the Bus observer's
`run_finished(workflow, outcome, seconds)`, if it has one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from ._client import Bus, current_bus
from ._envelope import Envelope, now_rfc3339
from ._errors import ConcurrencyError
from ._events import Event, new_event_id
from ._nats.acks import PublishResult
from ._store import EventStore
from ._workflow import RunContext, Workflow, describe_error
from ._workflow_events import (
    DOMAIN,
    CancelRequested,
    CompensationScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunView,
    Scheduled,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepsScheduled,
    StepsSkipped,
    apply,
    origin_of,
    routed_name,
    run_id_of,
)
from ._workflow_known import Known

log = logging.getLogger("bus.workflow")
E = TypeVar("E", bound=Event)  # a record that can carry the steps it schedules
UNDECIDED = (RunStarted, CancelRequested, StepCompleted, StepFailed, StepCompensated)
MAX_TRIES = 50  # reloads after a refused append, before the message is retried later


def context(run: RunView, workflow: Workflow[Any]) -> RunContext[Any]:
    outputs = {n: s.output for n, s in run.steps.items() if s.status == "completed"}
    return RunContext(run.run_id, workflow.parse_input(run.input), outputs)


def decide(run: RunView, workflow: Workflow[Any]) -> list[Event]:
    """All that follows from `run`'s state now, in order (none: nothing to do now): the
    steps to start, one record per action, or what winds the run down. Once all of it is
    recorded, nothing follows until something else is (an outcome, a cancel request)."""
    decided = _next(run, workflow)
    if decided and isinstance(decided[-1], StepFailed | StepsSkipped):  # the wind-down goes on
        after, at = run, now_rfc3339()
        for event in decided:
            after = apply(after, event, at, after.seq + 1)
        return decided + decide(after, workflow)
    return decided


def _next(run: RunView, workflow: Workflow[Any]) -> list[Event]:
    """What follows from `run`'s state first: the steps to start, or the next thing to do."""
    if run.finished:
        return []
    if run.cancel_requested:  # what is running is stopped; what completed is undone first
        return _compensation(run, workflow, RunCancelled())
    steps = run.steps
    pending, done, completed = [], set(), True
    for name in workflow.order:  # (one pass: this runs after every record)
        status = steps[name].status
        if status == "completed":
            done.add(name)
            continue
        if status == "failed":
            return _wind_down(run, workflow, name)
        completed = False
        if status == "pending":
            pending.append(name)
    if completed:
        ctx = context(run, workflow)
        if workflow.output is not None:
            return [RunCompleted(output=msgspec.to_builtins(workflow.output(ctx)))]
        return [RunCompleted(output={n: steps[n].output for n in workflow.leaves})]
    out: list[Scheduled] = []
    ready = []
    for name in pending:
        step = steps[name]
        if step.scheduled:  # an attempt failed: retry it (its input is the first's)
            out.append(schedule(workflow, name, step.scheduled + 1, None, step.not_before))
        elif done.issuperset(step.depends_on):
            ready.append(name)
    if ready:
        first = _first_attempts(workflow, ready, context(run, workflow), run.origin)
        if isinstance(first, StepFailed):
            return [first]
        out += first
    return _by_action(out, run.origin)


def _first_attempts(
    workflow: Workflow[Any], names: Sequence[str], ctx: RunContext[Any], origin: int
) -> list[Scheduled] | StepFailed:
    """The first attempts of steps `names`, their inputs made from `ctx`; or the failure of
    the first whose input function fails (user code: its failure is the step's)."""
    out = []
    for name in names:
        try:
            data = msgspec.to_builtins(workflow.step(name).input(ctx))
        except Exception as exc:
            error = f"input: {describe_error(exc)}"
            return StepFailed(step=name, attempt=0, error=error, origin=origin)
        out.append(schedule(workflow, name, 1, data))
    return out


def _by_action(scheduled: list[Scheduled], origin: int) -> list[Event]:
    """One record per action: a record is its action's task."""
    by_action: dict[str, list[Scheduled]] = {}
    for one in scheduled:
        by_action.setdefault(one.action, []).append(one)
    return [StepsScheduled(steps=steps, origin=origin) for steps in by_action.values()]


def schedule(
    workflow: Workflow[Any], name: str, attempt: int, data: Any, not_before: float = 0.0
) -> Scheduled:
    """Attempt `attempt` of step `name`, with what its worker needs of the definition."""
    step = workflow.step(name)
    last = attempt > step.retries
    return Scheduled(step=name, action=step.action, attempt=attempt, input=data,
                     not_before=not_before, timeout=step.timeout,
                     retry_delay=None if last else step.backoff.delay(attempt))  # fmt: skip


def first_steps(
    run_id: str, started: RunStarted, workflow: Workflow[Any], input: Any
) -> tuple[RunStarted, list[Event]]:
    """`started` with the steps the run starts with (one action's: the record is their
    task), and the records of the other first steps, for the starter to record next (see
    `at_origin`); when an input function fails, no steps, and the run's wind-down. `input`:
    the run's, typed (the first steps depend on nothing else: no fold, no decoding)."""
    first = _first_attempts(workflow, workflow.roots, RunContext(run_id, input, {}), 0)
    if isinstance(first, StepFailed):
        return started, decide(apply(RunView(), started, now_rfc3339(), 0, run_id), workflow)
    return with_first(started, _by_action(first, 0))


def at_origin(decided: list[Event], origin: int) -> list[Event]:
    """Records decided before the run's start was stored, with its sequence (`origin`)."""
    return [
        msgspec.structs.replace(e, origin=origin) if "origin" in e.__struct_fields__ else e
        for e in decided
    ]


def with_first(record: E, decided: list[Event]) -> tuple[E, list[Event]]:
    """`record` carrying the steps the first decision schedules (it is then their task),
    and the rest of `decided`."""
    if decided and isinstance(decided[0], StepsScheduled):
        return msgspec.structs.replace(record, scheduled=decided[0].steps), decided[1:]
    return record, decided


def _wind_down(run: RunView, workflow: Workflow[Any], failed: str) -> list[Event]:
    steps = run.steps
    # Not scheduled, or waiting for a retry: skipped (what is scheduled runs, and finishes).
    idle = [n for n in workflow.order if steps[n].status == "pending"]
    if idle:
        return [StepsSkipped(steps=idle, reason=f"step {failed!r} failed")]
    if any(steps[n].status == "running" for n in workflow.order):
        return []  # what is running finishes (and may need compensating) first
    error = f"step {failed!r} failed: {steps[failed].error}"
    return _compensation(run, workflow, RunFailed(error=error))


def _compensation(run: RunView, workflow: Workflow[Any], end: Event) -> list[Event]:
    """The next compensation, of the completed steps in reverse dependency order, one at a
    time (none: one is under way); `end` once there is none left to do."""
    for name in reversed(workflow.order):
        step, definition = run.steps[name], workflow.step(name)
        if step.status != "completed" or definition.compensate is None:
            continue
        if step.compensation is None:
            return [
                CompensationScheduled(
                    step=name, action=definition.compensate, input=step.output, origin=run.origin
                )
            ]
        if step.compensation == "scheduled":
            return []
    return [end]


class Orchestrator:
    """The handler deciding what no recorder decided, in runs of `workflows` (runs of
    other workflows are left alone); `known` is shared with the process's workers."""

    def __init__(self, workflows: Mapping[str, Workflow[Any]], known: Known) -> None:
        self.workflows = workflows
        self.known = known

    async def handle(self, event: Event, envelope: Envelope[Event]) -> None:
        run_id = run_id_of(envelope)
        if run_id is not None:
            store = EventStore(current_bus())
            async with self.known.deciding(run_id):
                await advance(store, run_id, origin_of(envelope), self.workflows, self.known)


def append(
    store: EventStore, run: RunView, event: Event, name: str | None = None
) -> Coroutine[Any, Any, PublishResult]:
    """Record `event` in `run` if nothing came after `run.seq` (ConcurrencyError otherwise),
    under its task name if it is a task. (A run's records are one event each: straight to
    the publisher, as EventStore.append's single event, with no layer of its own.)"""
    publisher = store.bus.publisher
    out = publisher.prepare(event, run.run_id, event_id=new_event_id(),
                            expected_version=run.seq, name=name or routed_name(event))  # fmt: skip
    return publisher.send(out)


async def advance(
    store: EventStore,
    run_id: str,
    origin: int,
    workflows: Mapping[str, Workflow[Any]],
    known: Known,
    run: RunView | None = None,
    decided: list[Event] | None = None,
) -> None:
    """Decide what follows in the run and record it. `run`: the run as known to be now
    (else it is read: the tail after what `known` keeps, or all of it); `decided`: all that
    was decided on it already (None: decide)."""
    workflow = workflows.get(run.workflow) if run is not None else None
    planned = None if decided is None else list(decided)
    for _ in range(MAX_TRIES):
        if run is None:
            run = await known.read(store, run_id, origin)
            workflow = workflows.get(run.workflow)
        if workflow is None:  # another app's workflow, or a run that is gone
            log.debug("run %s: workflow %r is not declared here", run_id, run.workflow)
            return
        if planned is None:
            planned = decide(run, workflow)
        if not planned:
            return  # (all that was decided is recorded: nothing follows, see decide)
        event = planned.pop(0)  # (the rest stays decided: only this one changes the run)
        try:
            seq = (await append(store, run, event)).seq
        except ConcurrencyError as exc:  # the history moved on: decide on what came too
            run = known.since(run_id, max(exc.actual or 0, run.seq + 1))  # (kept, or read)
            planned = None
            continue
        run = known.recorded(run_id, run, event, seq)
        observe(store.bus, run, workflow)
    known.forget(run_id)
    raise ConcurrencyError(f"{DOMAIN}.{run_id}.*", 0, None)  # retried later, with backoff


def observe(bus: Bus, run: RunView, workflow: Workflow[Any]) -> None:
    if not run.finished:
        return
    log.info("run %s %s%s", run.run_id, run.status, f": {run.error}" if run.error else "")
    record = getattr(bus.telemetry.observer, "run_finished", None)
    if record is not None:
        record(workflow.name, run.status, _seconds_since(run.started_at))


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return max(0.0, time.time() - datetime.fromisoformat(stamp).timestamp())
