"""The worker side of workflows: an action's handler runs the steps scheduled for it.

    @app.action("parse")
    async def parse(source: ParseInput) -> Parsed: ...

An action is hosted by any `bus worker` / `bus up` of the app: one durable consumer per
action (`wf-<action>`, on `wf.*.task_<action>`: the records scheduling its steps, which are
their tasks), so its instances share the work.

The handler runs a step without claiming it first (a step is running once scheduled), then
records its outcome (`StepCompleted` / `StepFailed`, with when it began) conditional on the
run's last sequence, only while the history shows that attempt scheduled and without an
outcome: so an outcome is recorded once, under redelivery, duplicate tasks or kill -9 at any
point, while a handler may run more than once (a redelivered task after its worker died, as
Temporal's activities: at-least-once execution, exactly-once outcomes). A worker that
declares the run's workflow decides what follows (bus._orchestrator) before its message is
acknowledged: the steps its outcome lets start ride on the outcome record, which is their
task; anything else follows in records of its own. One that does not leaves the decision to
the orchestrator (the outcome is stored as `decide`). The run's state comes from what the
process knows of it (the record it recorded itself: no read), else from its history.

A step's handler is stopped when its run is cancelled, and a task of a run cancelled since
is not run (a watch on `wf.*.cancel_requested` in each process; not a compensation's: a
cancel is what starts them); it is stopped after `timeout` seconds too (a failed attempt).
A Bus observer with `step_finished(workflow, step, outcome, seconds)` (observability.metrics
has it) counts each recorded attempt: outcome completed, failed or retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from ._client import Bus, current_bus
from ._envelope import Envelope, now_rfc3339
from ._errors import ConcurrencyError, ConfigError
from ._events import Event
from ._orchestrator import advance, append, decide, observe, with_first
from ._store import EventStore
from ._subscribe import HandlerSpec, handler_spec
from ._workflow import PermanentError, Workflow, check_name, describe_error
from ._workflow_events import (
    DECIDE,
    DOMAIN,
    TASK,
    TASKS,
    CompensationScheduled,
    RunCompleted,
    RunView,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepsScheduled,
    apply,
    load_run,
    origin_of,
    run_id_of,
    scheduled_by,
    workflow_of,
)
from ._workflow_known import Known

log = logging.getLogger("bus.workflow")
Action = Callable[[Any], Awaitable[Any]]
MAX_TRIES = 50
CANCELLED_KEPT = 10_000  # cancelled runs a process remembers


def action_spec(
    name: str,
    fn: Action,
    workflows: Mapping[str, Workflow[Any]],
    known: Known,
    **options: Any,
) -> HandlerSpec:
    """The consumer running action `name` (options as for `subscribe`: concurrency...),
    deciding what follows in runs of `workflows` (`known`: what the process saw of them)."""
    check_name(name, "action name")
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"action {name!r}: {fn.__qualname__} must be an async function")
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 1:
        raise ConfigError(f"action {name!r}: {fn.__qualname__} takes one argument (its input)")
    try:
        hint = typing.get_type_hints(fn).get(params[0].name, Any)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"action {name!r}: cannot read its annotations: {exc}") from None
    handler = TaskHandler(name, fn, hint, workflows, known)
    options.setdefault("max_deliver", 1000)  # failures are the steps'; this is for crashes
    options.setdefault("ack_wait", 10.0)  # a step held by a dead worker runs again after it
    return handler_spec(
        handler.handle, f"{DOMAIN}.*.{TASK}{name}", durable=f"wf-{name}", events=TASKS, **options
    )


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One step (or compensation) a record asks of an action."""

    run_id: str
    step: str
    attempt: int  # 0: a compensation
    input: Any
    origin: int  # the sequence of the run's first event
    version: int  # the sequence of the record: the run's version there
    timeout: float | None = None
    retry_delay: float | None = None  # None: the last attempt
    not_before: float = 0.0
    compensation: bool = False


def tasks_in(envelope: Envelope[Event], action: str) -> list[Task]:
    """What the record in `envelope` asks of `action`."""
    event, seq = envelope.event, envelope.seq or 0
    run_id, origin = run_id_of(envelope) or "", origin_of(envelope)
    if isinstance(event, CompensationScheduled):
        if event.action != action:
            return []
        return [Task(run_id=run_id, step=event.step, attempt=0, input=event.input,
                     origin=origin, version=seq, compensation=True)]  # fmt: skip
    return [
        Task(
            run_id=run_id,
            step=s.step,
            attempt=s.attempt,
            input=s.input,
            origin=origin,
            version=seq,
            timeout=s.timeout,
            retry_delay=s.retry_delay,
            not_before=s.not_before,
        )
        for s in scheduled_by(event)
        if s.action == action
    ]


class _Watch:
    """Stops a process's running steps of a run when it is cancelled (one subscription), and
    remembers the runs cancelled lately, so a task of one that comes later (a retry after its
    backoff, a redelivery) does not run at all."""

    def __init__(self) -> None:
        self.running: dict[str, set[asyncio.Task[Any]]] = {}  # the tasks running a run's steps
        self.stopped: set[asyncio.Task[Any]] = set()  # those cancelled for their run's cancel
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.started = False

    async def start(self, bus: Bus) -> None:
        self.started = True
        await bus.nc.subscribe(f"{DOMAIN}.*.cancel_requested", cb=self._on_cancel)

    async def _on_cancel(self, msg: Any) -> None:
        run_id = msg.subject.split(".")[1]
        self.cancelled[run_id] = None
        while len(self.cancelled) > CANCELLED_KEPT:
            self.cancelled.popitem(last=False)
        for task in self.running.get(run_id, ()):
            self.stopped.add(task)
            task.cancel()


_watches: weakref.WeakKeyDictionary[Bus, _Watch] = weakref.WeakKeyDictionary()


class TaskHandler:
    def __init__(
        self,
        action: str,
        fn: Action,
        input_type: Any,
        workflows: Mapping[str, Workflow[Any]],
        known: Known,
    ) -> None:
        self.action = action
        self.fn = fn
        self.input_type = input_type
        self.workflows = workflows
        self.known = known

    async def handle(self, event: Event, envelope: Envelope[Event]) -> None:
        tasks = tasks_in(envelope, self.action)
        if len(tasks) == 1:
            await self._do(tasks[0])
        else:  # several steps of this action, scheduled together: they run in parallel
            await asyncio.gather(*(self._do(task) for task in tasks))

    async def _do(self, task: Task) -> None:
        bus = current_bus()
        watch = _watches.get(bus) or _watches.setdefault(bus, _Watch())
        if not watch.started:
            await watch.start(bus)
        wait = task.not_before - time.time()
        if wait > 0:  # a retry's backoff (the history, not this process, holds the schedule)
            await asyncio.sleep(wait)
        if task.run_id in watch.cancelled and not task.compensation:
            return  # a cancel is what may start compensations: they run
        store = EventStore(bus)
        if task.input is None and not task.compensation:  # a retry decided elsewhere
            task = msgspec.structs.replace(task, input=await _first_input(store, task))
        started, began = time.monotonic(), now_rfc3339()
        outcome = await self._run(task, watch)
        if outcome is None:
            return  # the run was cancelled: nothing to record
        if isinstance(outcome, StepCompleted | StepFailed):
            outcome = msgspec.structs.replace(outcome, started_at=began)
        async with self.known.deciding(task.run_id):
            await self._record(store, task, outcome, time.monotonic() - started)

    async def _run(self, task: Task, watch: _Watch) -> Event | None:
        try:
            data = msgspec.convert(task.input, self.input_type)
        except msgspec.ValidationError as exc:
            return _failed(task, f"input: {exc}", retry=False)
        # The step runs in this task (no task of its own per step): the watch cancels this
        # one, and tells it so, when the run is cancelled.
        current = asyncio.current_task()
        assert current is not None
        stoppable = not task.compensation  # a cancel is what may start compensations
        if stoppable:
            watch.running.setdefault(task.run_id, set()).add(current)
        started = time.monotonic()
        try:
            if task.timeout is None:
                output = await self.fn(data)
            else:
                async with asyncio.timeout(task.timeout):
                    output = await self.fn(data)
        except TimeoutError:
            return _failed(task, f"timed out after {task.timeout:g}s", retry=True)
        except asyncio.CancelledError:
            if current not in watch.stopped:
                raise  # this process is stopping: the task is redelivered
            return None  # the run was cancelled: the step stops here
        except PermanentError as exc:
            return _failed(task, describe_error(exc), retry=False)
        except Exception as exc:
            return _failed(task, describe_error(exc), retry=True)
        finally:
            if stoppable:
                tasks = watch.running[task.run_id]
                tasks.discard(current)
                if not tasks:
                    del watch.running[task.run_id]
            if current in watch.stopped:  # the watch's cancel is done with (or was outrun)
                watch.stopped.discard(current)
                current.uncancel()
        if task.compensation:
            return StepCompensated(step=task.step, origin=task.origin)
        return StepCompleted(step=task.step, attempt=task.attempt,
                             output=msgspec.to_builtins(output),
                             seconds=time.monotonic() - started, origin=task.origin)  # fmt: skip

    async def _record(self, store: EventStore, task: Task, outcome: Event, seconds: float) -> None:
        """Append `outcome` while the history shows the attempt still running (scheduled, no
        outcome yet), with the steps it lets start; then decide what else follows. First at
        the record's version when the process knows the run there (no read), else on what
        is read; refused, on what came since: so an outcome is recorded once, however often
        its task is run, and a rerun after a crash decides what its first run could not.
        (In the process's turn on the run: `Known.deciding`.)"""
        workflow = self.workflows.get(workflow_of(task.run_id))
        run = self.known.since(task.run_id, task.version)
        for _ in range(MAX_TRIES):
            if run is None:
                run = await self.known.read(store, task.run_id, task.origin)
            if not _still_ours(run, task):  # recorded by an earlier run of it, or moved on
                if workflow is not None:
                    await advance(store, task.run_id, task.origin, self.workflows, self.known,
                                  run)  # fmt: skip
                return
            decided: list[Event] = []
            record, after = outcome, None
            if workflow is not None:
                record, decided, after = _with_next(run, task, outcome, workflow)
            try:
                result = await append(store, run, record, DECIDE if workflow is None else None)
            except ConcurrencyError as exc:  # the run moved on: what came is checked
                run = self.known.since(task.run_id, max(exc.actual or 0, run.seq + 1))
                continue
            _observe(store.bus, task, outcome, seconds)
            if workflow is not None and after is not None:
                run = self.known.stored(after, result.seq)
                observe(store.bus, run, workflow)
                if decided:  # (else all that follows rides on the record)
                    await advance(store, task.run_id, task.origin, self.workflows, self.known,
                                  run, decided)  # fmt: skip
            return
        raise ConcurrencyError(f"{DOMAIN}.{task.run_id}.*", 0, None)


def _with_next(
    run: RunView, task: Task, outcome: Event, workflow: Workflow[Any]
) -> tuple[Event, list[Event], RunView]:
    """`outcome` with what follows it riding on it: the steps it lets start (one action's:
    the record is their task; a retry of this step takes this attempt's input), or the
    run's completion carrying it; what else follows it; and the run as the record leaves it
    (folded once, for deciding; its sequence is the record's once stored)."""
    at = now_rfc3339()
    folded = apply(run, outcome, at, run.seq)
    decided = decide(folded, workflow)
    if not (decided and isinstance(outcome, StepCompleted | StepFailed)):
        return outcome, decided, folded
    first = decided[0]
    if isinstance(first, RunCompleted) and isinstance(outcome, StepCompleted):  # the last step
        completed = msgspec.structs.replace(first, step=outcome)
        return completed, decided[1:], apply(folded, first, at, 0)
    if isinstance(first, StepsScheduled):
        if isinstance(outcome, StepFailed):  # (only a failed attempt is scheduled again)
            steps = [
                msgspec.structs.replace(s, input=task.input) if s.step == task.step else s
                for s in first.steps
            ]
            first = msgspec.structs.replace(first, steps=steps)
        record, rest = with_first(outcome, [first, *decided[1:]])
        return record, rest, apply(folded, first, at, 0)
    return outcome, decided, folded


async def _first_input(store: EventStore, task: Task) -> Any:
    """The input the step was first scheduled with (a retry's record carries none)."""
    history, _ = await load_run(store, task.run_id, task.origin)
    found = None
    for envelope in history.events:
        for scheduled in scheduled_by(envelope.event):
            if scheduled.step == task.step and scheduled.input is not None:
                found = scheduled.input
    return found


def _still_ours(run: RunView, task: Task) -> bool:
    step = run.steps.get(task.step)
    if step is None or run.finished:
        return False
    if task.compensation:
        return step.compensation == "scheduled"
    return step.status == "running" and step.scheduled == task.attempt


def _failed(task: Task, error: str, *, retry: bool) -> Event:
    if task.compensation:
        return StepCompensated(step=task.step, error=error, origin=task.origin)
    again = retry and task.retry_delay is not None
    retry_at = time.time() + (task.retry_delay or 0.0) if again else 0.0
    return StepFailed(step=task.step, attempt=task.attempt, error=error, will_retry=again,
                      retry_at=retry_at, origin=task.origin)  # fmt: skip


def _observe(bus: Bus, task: Task, outcome: Event, seconds: float) -> None:
    if isinstance(outcome, StepFailed):
        log.warning("run %s: step %s attempt %d failed%s: %s", task.run_id, task.step,
                    task.attempt, ", will retry" if outcome.will_retry else "",
                    outcome.error)  # fmt: skip
    record = getattr(bus.telemetry.observer, "step_finished", None)
    if record is None or task.compensation:
        return
    if isinstance(outcome, StepFailed):
        result = "retried" if outcome.will_retry else "failed"
    else:
        result = "completed"
    record(workflow_of(task.run_id), task.step, result, seconds)
