"""The worker side of workflows: an action's handler runs the step tasks sent to it.

    @app.action("parse")
    async def parse(source: ParseInput) -> Parsed: ...

An action is hosted by any `bus worker` / `bus up` of the app: one durable consumer per
action (`wf-<action>` on `wftask.<action>.task`), so its instances share the tasks.

The handler runs a task without claiming it first (no record before it runs: a step is
running once scheduled), then appends its outcome (`StepCompleted` / `StepFailed`, with
when it began) conditional on the run's last sequence, only while the history shows that
attempt scheduled and without an outcome: so an outcome is recorded once, under
redelivery, duplicate tasks or kill -9 at any point, while a handler may run more than
once (a redelivered task after its worker died, as Temporal's activities: at-least-once
execution, exactly-once outcomes). The append first tries at the run's version the task
was sent at, without reading (there the attempt was running by construction); refused, it
reads what came since: other steps' outcomes or retries alone (parallel steps) leave the
attempt running, anything else has it read the whole history and check. The outcome says
at which version it landed (`after`), so the orchestrator needs no read when nothing came
between. A step's handler is stopped when its run is cancelled, and a task of a run
cancelled since is not run (a watch on `wf.*.cancel_requested` in each process; not a
compensation's: a cancel is what starts them); it is stopped after `timeout` seconds too (a
failed attempt). A Bus observer with `step_finished(workflow, step, outcome, seconds)`
(observability.metrics has it) counts each recorded attempt: outcome completed, failed or
retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ._client import Bus, current_bus
from ._envelope import Envelope, now_rfc3339
from ._errors import ConcurrencyError, ConfigError
from ._events import Event, new_event_id
from ._store import EventStore
from ._subscribe import HandlerSpec, handler_spec
from ._workflow import PermanentError, check_name, describe_error
from ._workflow_events import (
    DOMAIN,
    TASKS,
    RunView,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepsScheduled,
    StepTask,
    load_run,
)

log = logging.getLogger("bus.workflow")
Action = Callable[[Any], Awaitable[Any]]
MAX_TRIES = 50
CANCELLED_KEPT = 10_000  # cancelled runs a process remembers


def action_spec(name: str, fn: Action, **options: Any) -> HandlerSpec:
    """The consumer running action `name` (options as for `subscribe`: concurrency...)."""
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
    handler = TaskHandler(fn, hint)
    options.setdefault("max_deliver", 1000)  # failures are the steps'; this is for crashes
    options.setdefault("ack_wait", 10.0)  # a step held by a dead worker runs again after it
    return handler_spec(
        handler.handle,
        f"{TASKS}.{name}.task",
        durable=f"wf-{name}",
        events=(StepTask,),
        **options,
    )


class _Watch:
    """Stops a process's running steps of a run when it is cancelled (one subscription), and
    remembers the runs cancelled lately, so a task of one that comes later (a retry after its
    backoff, a redelivery) does not run at all."""

    def __init__(self) -> None:
        self.running: dict[str, set[asyncio.Task[Any]]] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.started = False

    async def ensure(self, bus: Bus) -> None:
        if not self.started:
            self.started = True
            await bus.nc.subscribe(f"{DOMAIN}.*.cancel_requested", cb=self._on_cancel)

    async def _on_cancel(self, msg: Any) -> None:
        run_id = msg.subject.split(".")[1]
        self.cancelled[run_id] = None
        while len(self.cancelled) > CANCELLED_KEPT:
            self.cancelled.popitem(last=False)
        for task in self.running.get(run_id, ()):
            task.cancel()


_watches: weakref.WeakKeyDictionary[Bus, _Watch] = weakref.WeakKeyDictionary()


class TaskHandler:
    def __init__(self, fn: Action, input_type: Any) -> None:
        self.fn = fn
        self.input_type = input_type

    async def handle(self, task: StepTask, envelope: Envelope[StepTask]) -> None:
        bus = current_bus()
        watch = _watches.setdefault(bus, _Watch())
        await watch.ensure(bus)
        wait = task.not_before - time.time()
        if wait > 0:  # a retry's backoff (the history, not this process, holds the schedule)
            await asyncio.sleep(wait)
        if task.run_id in watch.cancelled and not task.compensation:
            return  # a cancel is what may start compensations: they run
        started, began = time.monotonic(), now_rfc3339()
        outcome = await self._run(task, watch)
        if outcome is None:
            return  # the run was cancelled: nothing to record
        seconds = time.monotonic() - started
        if isinstance(outcome, StepCompleted | StepFailed):
            outcome = msgspec.structs.replace(outcome, started_at=began)
        if await _record(EventStore(bus), task, outcome):
            _observe(bus, task, outcome, seconds)
            if isinstance(outcome, StepFailed):
                log.warning("run %s: step %s attempt %d failed%s: %s", task.run_id, task.step,
                            task.attempt, ", will retry" if outcome.will_retry else "",
                            outcome.error)  # fmt: skip

    async def _run(self, task: StepTask, watch: _Watch) -> Event | None:
        try:
            data = msgspec.convert(task.input, self.input_type)
        except msgspec.ValidationError as exc:
            return _failed(task, f"input: {exc}", retry=False)
        running = asyncio.ensure_future(self.fn(data))
        if not task.compensation:  # a cancel is what may start compensations: they finish
            watch.running.setdefault(task.run_id, set()).add(running)
        started = time.monotonic()
        try:
            output = await asyncio.wait_for(running, task.timeout)
        except TimeoutError:
            return _failed(task, f"timed out after {task.timeout:g}s", retry=True)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this process is stopping: the task is redelivered
            return None
        except PermanentError as exc:
            return _failed(task, describe_error(exc), retry=False)
        except Exception as exc:
            return _failed(task, describe_error(exc), retry=True)
        finally:
            tasks = watch.running.get(task.run_id, set())
            tasks.discard(running)
            if not tasks:
                watch.running.pop(task.run_id, None)
        if task.compensation:
            return StepCompensated(step=task.step, origin=task.origin)
        seconds = time.monotonic() - started
        return StepCompleted(
            step=task.step,
            attempt=task.attempt,
            output=msgspec.to_builtins(output),
            seconds=seconds,
            origin=task.origin,
        )


async def _record(store: EventStore, task: StepTask, outcome: Event) -> bool:
    """Append `outcome` while the history shows the attempt still running (scheduled, no
    outcome yet). First at the run's version the task was sent at without reading (the
    attempt was running there by construction), then, if the run moved on meanwhile, from
    what came since: so an outcome is recorded once, however often its task is run."""
    version = task.version
    for _ in range(MAX_TRIES):
        if not version:
            history, run = await load_run(store, task.run_id, task.origin)
            if not _still_ours(run, task):
                return False
            version = history.version
        if isinstance(outcome, StepCompleted | StepFailed):
            outcome = msgspec.structs.replace(outcome, after=version)
        try:
            await store.append(
                DOMAIN, task.run_id, [outcome], expected_version=version,
                event_ids=[new_event_id()],
            )  # fmt: skip
            return True
        except ConcurrencyError:
            version = await _moved_on(store, task, version)
    raise ConcurrencyError(f"{DOMAIN}.{task.run_id}.*", 0, None)


async def _moved_on(store: EventStore, task: StepTask, version: int) -> int:
    """The run's version now if all appended since `version` is other steps' work (a
    parallel step's outcome or retry: what held for this step at `version` holds still), or
    0 (read the whole history and check). Reads only the tail: the common refusal is cheap."""
    tail = await store.load(DOMAIN, task.run_id, since=version)
    if tail.events and all(_elsewhere(e.event, task.step) for e in tail.events):
        return tail.version
    return 0


def _elsewhere(event: Event, step: str) -> bool:
    match event:
        case StepCompleted() | StepFailed():
            return event.step != step
        case StepsScheduled(steps=scheduled):
            return all(s.step != step for s in scheduled)
    return False


def _still_ours(run: RunView, task: StepTask) -> bool:
    step = run.steps.get(task.step)
    if step is None or run.finished:
        return False
    if task.compensation:
        return step.compensation == "scheduled"
    return step.status == "running" and step.scheduled == task.attempt


def _failed(task: StepTask, error: str, *, retry: bool) -> Event:
    if task.compensation:
        return StepCompensated(step=task.step, error=error, origin=task.origin)
    again = retry and task.retry_delay is not None
    retry_at = time.time() + (task.retry_delay or 0.0) if again else 0.0
    return StepFailed(step=task.step, attempt=task.attempt, error=error, will_retry=again,
                      retry_at=retry_at, origin=task.origin)  # fmt: skip


def _observe(bus: Bus, task: StepTask, outcome: Event, seconds: float) -> None:
    record = getattr(bus.telemetry.observer, "step_finished", None)
    if record is None or task.compensation:
        return
    if isinstance(outcome, StepFailed):
        result = "retried" if outcome.will_retry else "failed"
    else:
        result = "completed"
    record(task.workflow, task.step, result, seconds)
