"""The orchestrator: decides what follows in a run, from the run's history alone.

It is a handler on the run events that can change a decision (run started, step completed
or failed, compensation done, cancel requested), on one durable consumer per app, so any
number of instances share the work. For each event it loads the run's whole history (from
its first event, whose sequence every trigger carries; from the leader on a replicated
stream: bus.EventStore), folds it (bus._workflow_events), decides
(`decide`, pure) and appends its decisions conditional on the run's last sequence. If
anything else was appended meanwhile (a worker's outcome, a second orchestrator's decision
on another event of the same run), JetStream refuses the append (ConcurrencyError) and it
reloads and decides again. That condition IS the fencing: two instances, or a rerun after a
kill -9 between the append and the ack, never record a decision twice, because the second
one decides on a history that already holds the first's.

After deciding it sends a task for every scheduled step not started yet (`tasks_for`); the
task's `Nats-Msg-Id` is `<run>.<step>.<attempt>`, so resending after a crash stores nothing
new, and a worker drops a task whose attempt the history shows taken.

Rules: a step whose dependencies all completed is scheduled (all such at once: they run in
parallel); a failed attempt with retries left is scheduled again after its backoff; once a
step has failed for good nothing new starts, the steps not started are skipped, and when none
is running the completed steps with `compensate=` are compensated one at a time in reverse
dependency order, then the run fails; a cancel request cancels the run (what is in flight
is stopped by the workers and its outcome dropped). The instance recording a run's end tells
the Bus observer's `run_finished(workflow, outcome, seconds)`, if it has one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from ._client import current_bus
from ._envelope import Envelope, now_rfc3339
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
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepsSkipped,
    StepTask,
    apply_run,
    load_run,
    run_id_of,
)

log = logging.getLogger("bus.workflow")
TRIGGERS = (RunStarted, StepCompleted, StepFailed, StepCompensated, CancelRequested)
MAX_TRIES = 50  # reloads after a refused append, before the event is retried later


def context(run: RunView, workflow: Workflow[Any]) -> RunContext[Any]:
    outputs = {n: s.output for n, s in run.steps.items() if s.status == "completed"}
    return RunContext(run.run_id, workflow.parse_input(run.input), outputs)


def decide(run: RunView, workflow: Workflow[Any]) -> list[Event]:
    """The events that follow from `run`'s state (none: nothing to do now)."""
    if run.finished:
        return []
    if run.cancel_requested:
        return [RunCancelled()]
    steps = run.steps
    failed = [n for n in workflow.order if steps[n].status == "failed"]
    if failed:
        return _wind_down(run, workflow, failed[0])
    out: list[Event] = []
    ready = []
    for name in workflow.order:
        step = steps[name]
        if step.status != "pending":
            continue
        if step.scheduled == 0 and all(steps[d].status == "completed" for d in step.depends_on):
            ready.append(name)
        elif step.scheduled and step.attempts == step.scheduled:  # failed, retry it
            retry_at = _retry_at(run, name)
            out.append(
                StepScheduled(
                    step=name, attempt=step.scheduled + 1, input=None, not_before=retry_at
                )
            )
    if ready:
        ctx = context(run, workflow)
        for name in ready:
            try:
                data = msgspec.to_builtins(workflow.step(name).input(ctx))
            except Exception as exc:  # the input function is user code: its failure is the step's
                error = f"input: {describe_error(exc)}"
                return [StepFailed(step=name, attempt=0, error=error, origin=run.origin)]
            out.append(StepScheduled(step=name, attempt=1, input=data))
    if not out and all(s.status == "completed" for s in steps.values()):
        ctx = context(run, workflow)
        if workflow.output is not None:
            return [RunCompleted(output=msgspec.to_builtins(workflow.output(ctx)))]
        return [RunCompleted(output={n: steps[n].output for n in workflow.leaves})]
    return out


def _retry_at(run: RunView, name: str) -> float:
    """When a failed attempt's retry may start: recorded by the worker that failed it."""
    return run.steps[name].not_before


def _wind_down(run: RunView, workflow: Workflow[Any], failed: str) -> list[Event]:
    steps = run.steps
    # Not started (scheduled or not, or waiting for a retry): skipped; a task already sent
    # for one finds it skipped and is dropped.
    idle = [n for n in workflow.order if steps[n].status == "pending"]
    if idle:
        return [StepsSkipped(steps=idle, reason=f"step {failed!r} failed")]
    if any(steps[n].status == "running" for n in workflow.order):
        return []  # what is running finishes (and may need compensating) first
    for name in reversed(workflow.order):
        step, definition = steps[name], workflow.step(name)
        if step.status != "completed" or definition.compensate is None:
            continue
        if step.compensation is None:
            return [
                CompensationScheduled(step=name, action=definition.compensate, input=step.output)
            ]
        if step.compensation == "scheduled":
            return []
    return [RunFailed(error=f"step {failed!r} failed: {steps[failed].error}")]


def tasks_for(run: RunView, workflow: Workflow[Any], inputs: Mapping[str, Any]) -> list[StepTask]:
    """A task for every step scheduled and not started, and every compensation not done."""
    if run.finished or run.cancel_requested:
        return []
    out = []
    for name in workflow.order:
        step, definition = run.steps[name], workflow.step(name)
        if step.status == "pending" and step.scheduled > step.attempts:
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


def _as_envelope(event: Event, run_id: str, seq: int) -> Envelope[Event]:
    """A decision just appended, as the fold sees a stored event."""
    subject = f"{DOMAIN}.{run_id}.{event.__event_name__}"
    return Envelope(
        event=event, id="", subject=subject, occurred_at=now_rfc3339(), correlation_id="", seq=seq
    )


class Orchestrator:
    """The handler deciding runs of `workflows` (runs of other workflows are left alone)."""

    def __init__(self, workflows: Mapping[str, Workflow[Any]]) -> None:
        self.workflows = workflows

    async def handle(self, event: Event, envelope: Envelope[Event]) -> None:
        run_id = run_id_of(envelope)
        if run_id is None:
            return
        origin = envelope.seq if isinstance(event, RunStarted) else getattr(event, "origin", 0)
        await advance(EventStore(current_bus()), run_id, origin or 0, self.workflows)


Still = Callable[[RunView], bool]


async def advance(
    store: EventStore,
    run_id: str,
    origin: int,
    workflows: Mapping[str, Workflow[Any]],
    lead: Event | None = None,
    still: Still | None = None,
) -> bool:
    """Decide what follows in the run and record it, then send the tasks it schedules.

    `lead` (a worker's outcome) goes first in the same append, if `still(run)` holds on the
    history then (False if not: nothing is recorded). Each append is conditional on the
    run's last sequence; when refused, the history is read again and decided again."""
    for _ in range(MAX_TRIES):
        history, run = await load_run(store, run_id, origin)
        workflow = workflows.get(run.workflow)
        if workflow is None:  # another app's workflow, or a run that is gone
            log.debug("run %s: workflow %r is not declared here", run_id, run.workflow)
            return False
        if still is not None and not still(run):
            return False
        origin = run.origin
        events = [] if lead is None else [lead]
        after = run if lead is None else apply_run(run, _as_envelope(lead, run_id, run.seq + 1))
        events += decide(after, workflow)
        inputs = inputs_of(history.events)
        if events:
            try:
                result = await store.append(DOMAIN, run_id, events,
                                            expected_version=history.version,
                                            event_ids=[new_event_id() for _ in events])  # fmt: skip
            except ConcurrencyError:
                continue  # the history moved on: decide again on what it is now
            lead = still = None  # recorded
            for event, ack in zip(events, result.events, strict=True):
                run = apply_run(run, _as_envelope(event, run_id, ack.seq))
                if isinstance(event, StepScheduled) and event.input is not None:
                    inputs[event.step] = event.input
            _observe(run, workflow)
            if decide(run, workflow):
                continue  # e.g. skipped steps, then the failure
        await send_tasks(run, workflow, inputs)
        return True
    raise ConcurrencyError(f"{DOMAIN}.{run_id}.*", 0, None)  # retried later, with backoff


def inputs_of(events: list[Envelope[Event]]) -> dict[str, Any]:
    """Each step's input, as its scheduling recorded it (a retry records none)."""
    return {
        e.event.step: e.event.input
        for e in events
        if isinstance(e.event, StepScheduled) and e.event.input is not None
    }


async def send_tasks(run: RunView, workflow: Workflow[Any], inputs: Mapping[str, Any]) -> None:
    """Send the tasks of `run`'s scheduled steps not started (parallel ones together); a
    task sent before has the same id, and JetStream stores it once."""
    bus = current_bus()
    sends = []
    for task in tasks_for(run, workflow, inputs):
        suffix = "compensate" if task.compensation else str(task.attempt)
        step = workflow.step(task.step)
        action = step.compensate if task.compensation else step.action
        assert action is not None
        sends.append(bus.publish(task, action, event_id=f"{run.run_id}.{task.step}.{suffix}"))
    await asyncio.gather(*sends)


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
