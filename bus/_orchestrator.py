"""The orchestrator: decides what follows in a run, from the run's history alone.

It is a handler on the run events that can change a decision (run started, step completed
or failed, compensation done, cancel requested), on one durable consumer per app, so any
number of instances share the work. For each event it reads the run's history (from its
first event, whose sequence every trigger carries; from the leader on a replicated stream:
bus.EventStore), folds it (bus._workflow_events), decides (`decide`, pure: one event, the
steps to start now in one `StepsScheduled`) and appends it conditional on the run's last
sequence. It keeps each run folded as it last saw it
(bus._workflow_known), so it reads only what was appended since, and not at all where that
is known to be nothing. If anything else was appended meanwhile (a worker's outcome, a
second orchestrator's decision on another event of the same run), JetStream refuses the
append (ConcurrencyError) and it reads on and decides again. That condition IS the
fencing: two instances, or a rerun after a kill -9 between the append and the ack, never
record a decision twice, because the second one decides on a history that already holds
the first's.

After deciding it sends a task for every running step (scheduled, no outcome yet:
`tasks_for`) not sent by this instance already; the task's `Nats-Msg-Id` is
`<run>.<step>.<attempt>`, so resending after a crash stores nothing new, and a worker's
outcome for an attempt the history shows decided already is not recorded. A run's first
steps are decided by its starter (`first_steps`) into the start record itself: on that
trigger the orchestrator only sends their tasks.

Rules: a step whose dependencies all completed is scheduled (all such at once: they run in
parallel); a failed attempt with retries left is scheduled again after its backoff; once a
step has failed for good nothing new starts, the steps not scheduled are skipped, and when
none is running the completed steps with `compensate=` are compensated one at a time in reverse
dependency order, then the run fails; a cancel request stops what is in flight (the
workers stop its handlers and drop their outcomes), compensates the completed steps the
same way, then cancels the run. The instance recording a run's end tells the Bus observer's
`run_finished(workflow, outcome, seconds)`, if it has one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from ._client import current_bus
from ._envelope import Envelope
from ._errors import ConcurrencyError
from ._events import Event, new_event_id
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
    StepTask,
    apply_run,
    run_id_of,
    scheduled_inputs,
)
from ._workflow_known import Known, as_envelope

log = logging.getLogger("bus.workflow")
TRIGGERS = (RunStarted, StepCompleted, StepFailed, StepCompensated, CancelRequested)
MAX_TRIES = 50  # reloads after a refused append, before the event is retried later


def context(run: RunView, workflow: Workflow[Any]) -> RunContext[Any]:
    outputs = {n: s.output for n, s in run.steps.items() if s.status == "completed"}
    return RunContext(run.run_id, workflow.parse_input(run.input), outputs)


def decide(run: RunView, workflow: Workflow[Any]) -> list[Event]:
    """The event that follows from `run`'s state (none: nothing to do now); one at most, so
    an append is never an atomic batch."""
    if run.finished:
        return []
    if run.cancel_requested:  # what is running is stopped; what completed is undone first
        undo = _compensation(run, workflow)
        return [RunCancelled()] if undo is None else undo
    steps = run.steps
    failed = [n for n in workflow.order if steps[n].status == "failed"]
    if failed:
        return _wind_down(run, workflow, failed[0])
    out: list[Scheduled] = []
    ready = []
    for name in workflow.order:
        step = steps[name]
        if step.status != "pending":
            continue
        if step.scheduled == 0 and all(steps[d].status == "completed" for d in step.depends_on):
            ready.append(name)
        elif step.scheduled:  # an attempt failed: retry it
            retry_at = _retry_at(run, name)
            out.append(
                Scheduled(step=name, attempt=step.scheduled + 1, input=None, not_before=retry_at)
            )
    if ready:
        ctx = context(run, workflow)
        for name in ready:
            try:
                data = msgspec.to_builtins(workflow.step(name).input(ctx))
            except Exception as exc:  # the input function is user code: its failure is the step's
                error = f"input: {describe_error(exc)}"
                return [StepFailed(step=name, attempt=0, error=error, origin=run.origin)]
            out.append(Scheduled(step=name, attempt=1, input=data))
    if out:
        return [StepsScheduled(steps=out)]
    if all(s.status == "completed" for s in steps.values()):
        ctx = context(run, workflow)
        if workflow.output is not None:
            return [RunCompleted(output=msgspec.to_builtins(workflow.output(ctx)))]
        return [RunCompleted(output={n: steps[n].output for n in workflow.leaves})]
    return []


def first_steps(run_id: str, started: RunStarted, workflow: Workflow[Any]) -> RunStarted:
    """`started` with the steps the run starts with, so the starter's record is also the
    first decision (none when an input function fails: the orchestrator records that)."""
    run = apply_run(RunView(), as_envelope(started, run_id, 1))
    match decide(run, workflow):
        case [StepsScheduled(steps=scheduled)]:
            return msgspec.structs.replace(started, scheduled=scheduled)
    return started


def _retry_at(run: RunView, name: str) -> float:
    """When a failed attempt's retry may start: recorded by the worker that failed it."""
    return run.steps[name].not_before


def _wind_down(run: RunView, workflow: Workflow[Any], failed: str) -> list[Event]:
    steps = run.steps
    # Not scheduled, or waiting for a retry: skipped (what is scheduled runs, and finishes).
    idle = [n for n in workflow.order if steps[n].status == "pending"]
    if idle:
        return [StepsSkipped(steps=idle, reason=f"step {failed!r} failed")]
    if any(steps[n].status == "running" for n in workflow.order):
        return []  # what is running finishes (and may need compensating) first
    undo = _compensation(run, workflow)
    return (
        [RunFailed(error=f"step {failed!r} failed: {steps[failed].error}")]
        if undo is None
        else undo
    )


def _compensation(run: RunView, workflow: Workflow[Any]) -> list[Event] | None:
    """The next compensation, of the completed steps in reverse dependency order, one at a
    time ([]: one is under way); None once there is none left to do."""
    for name in reversed(workflow.order):
        step, definition = run.steps[name], workflow.step(name)
        if step.status != "completed" or definition.compensate is None:
            continue
        if step.compensation is None:
            return [
                CompensationScheduled(step=name, action=definition.compensate, input=step.output)
            ]
        if step.compensation == "scheduled":
            return []
    return None


def tasks_for(run: RunView, workflow: Workflow[Any], inputs: Mapping[str, Any]) -> list[StepTask]:
    """A task for every step running (scheduled, its outcome not recorded; none once the run
    is to be cancelled), and every compensation not done."""
    if run.finished:
        return []
    out = []
    for name in workflow.order:
        step, definition = run.steps[name], workflow.step(name)
        if step.status == "running" and not run.cancel_requested:
            last = step.scheduled > definition.retries
            delay = None if last else definition.backoff.delay(step.scheduled)
            out.append(
                StepTask(
                    run_id=run.run_id,
                    workflow=workflow.name,
                    step=name,
                    attempt=step.scheduled,
                    input=inputs.get(name),
                    timeout=definition.timeout,
                    retry_delay=delay,
                    not_before=step.not_before,
                    version=run.seq,
                    origin=run.origin,
                )
            )
        elif step.compensation == "scheduled":
            out.append(
                StepTask(
                    run_id=run.run_id,
                    workflow=workflow.name,
                    step=name,
                    attempt=0,
                    input=step.output,
                    compensation=True,
                    origin=run.origin,
                )
            )
    return out


class Orchestrator:
    """The handler deciding runs of `workflows` (runs of other workflows are left alone)."""

    def __init__(self, workflows: Mapping[str, Workflow[Any]]) -> None:
        self.workflows = workflows
        self.known = Known()

    async def handle(self, event: Event, envelope: Envelope[Event]) -> None:
        run_id = run_id_of(envelope)
        if run_id is None:
            return
        if isinstance(event, RunStarted):  # the run's whole history so far: no read
            fresh = self.known.get(run_id) is None
            if fresh:
                self.known.remember(apply_run(RunView(), envelope), scheduled_inputs(event))
        else:
            fresh = self.known.follow(run_id, envelope)
        origin = envelope.seq if isinstance(event, RunStarted) else getattr(event, "origin", 0)
        store = EventStore(current_bus())
        await advance(store, run_id, origin or 0, self.workflows, self.known, fresh=fresh)


async def advance(
    store: EventStore,
    run_id: str,
    origin: int,
    workflows: Mapping[str, Workflow[Any]],
    known: Known,
    fresh: bool = False,
) -> bool:
    """Decide what follows in the run and record it, then send the tasks it schedules.

    Each append is conditional on the run's last sequence; when refused, what was appended
    since is read and decided on again. `fresh`: what `known` holds is the whole history."""
    for _ in range(MAX_TRIES):
        kept = known.get(run_id) if fresh else None
        if kept is not None:
            run, inputs = kept[0], dict(kept[1])
        else:
            run, inputs = await known.read(store, run_id, origin)
        workflow = workflows.get(run.workflow)
        if workflow is None:  # another app's workflow, or a run that is gone
            log.debug("run %s: workflow %r is not declared here", run_id, run.workflow)
            return False
        origin = run.origin
        events = decide(run, workflow)
        if events:
            try:
                result = await store.append(DOMAIN, run_id, events, expected_version=run.seq,
                                            event_ids=[new_event_id() for _ in events])  # fmt: skip
            except ConcurrencyError:
                fresh = False  # the history moved on: read what, and decide again
                continue
            for event, ack in zip(events, result.events, strict=True):
                run = apply_run(run, as_envelope(event, run_id, ack.seq))
                inputs.update(scheduled_inputs(event))
            known.remember(run, inputs)
            fresh = True  # known up to our own append
            _observe(run, workflow)
            if decide(run, workflow):
                continue  # e.g. skipped steps, then the failure
        await send_tasks(run, workflow, inputs, known.sent(run_id))
        return True
    known.forget(run_id)
    raise ConcurrencyError(f"{DOMAIN}.{run_id}.*", 0, None)  # retried later, with backoff


async def send_tasks(
    run: RunView, workflow: Workflow[Any], inputs: Mapping[str, Any], sent: set[str]
) -> None:
    """Send the tasks of `run`'s scheduled steps not started (parallel ones together) but
    those in `sent` (added to it once stored); a task sent before has the same id, and
    JetStream stores it once."""
    bus = current_bus()
    ids, sends = [], []
    for task in tasks_for(run, workflow, inputs):
        suffix = "compensate" if task.compensation else str(task.attempt)
        task_id = f"{run.run_id}.{task.step}.{suffix}"
        if task_id in sent:
            continue
        step = workflow.step(task.step)
        action = step.compensate if task.compensation else step.action
        assert action is not None
        ids.append(task_id)
        sends.append(bus.publish(task, action, event_id=task_id))
    await asyncio.gather(*sends)
    sent.update(ids)


def _observe(run: RunView, workflow: Workflow[Any]) -> None:
    if not run.finished:
        return
    log.info("run %s %s%s", run.run_id, run.status, f": {run.error}" if run.error else "")
    record = getattr(current_bus().telemetry.observer, "run_finished", None)
    if record is not None:
        record(workflow.name, run.status, _seconds_since(run.started_at))


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return max(0.0, time.time() - datetime.fromisoformat(stamp).timestamp())
