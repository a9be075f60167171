"""The worker side of workflows: an action's handler runs the step tasks sent to it.

    @app.action("parse")
    async def parse(source: ParseInput) -> Parsed: ...

An action is hosted by any `bus worker` / `bus up` of the app: one durable consumer per
action (`wf-<action>` on `wftask.<action>.task`), so its instances share the tasks.

Before running a task the handler claims it: it appends `StepStarted` conditional on the
run's last sequence, only if the history shows that attempt scheduled and not started (or
started by this very task message, which is then a redelivery after its worker died). Its
outcome is appended the same way, only while the history shows the attempt still running
with this task: so no step is recorded as completed twice, under redelivery, duplicate
tasks or kill -9 at any point. Both first try without reading the history: the claim at the
run's version the task was sent at, the outcome at the claim's (at those, the attempt was
ours by construction); refused, they read what came since: other steps' claims and
outcomes alone (parallel steps) leave the attempt theirs, anything else has them read the
whole history and check. The outcome says where the claim and it landed (`Landed`), so the
orchestrator needs no read when nothing came between. A step's handler is stopped when its
run is cancelled (a watch on `wf.*.cancel_requested` in each process; not a compensation's:
a cancel is what starts them), and after `timeout` seconds (a failed attempt). A Bus
observer with `step_finished(workflow, step, outcome, seconds)` (observability.metrics has
it) counts each recorded attempt: outcome completed, failed or retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ._client import Bus, current_bus
from ._envelope import Envelope
from ._errors import ConcurrencyError, ConfigError
from ._events import Event, new_event_id
from ._store import EventStore
from ._subscribe import HandlerSpec, handler_spec
from ._workflow import PermanentError, check_name, describe_error
from ._workflow_events import (
    DOMAIN,
    TASKS,
    Landed,
    RunView,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepStarted,
    StepTask,
    load_run,
)

log = logging.getLogger("bus.workflow")
Action = Callable[[Any], Awaitable[Any]]
MAX_TRIES = 50


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
    """Stops a process's running steps of a run when it is cancelled (one subscription)."""

    def __init__(self) -> None:
        self.running: dict[str, set[asyncio.Task[Any]]] = {}
        self.started = False

    async def ensure(self, bus: Bus) -> None:
        if not self.started:
            self.started = True
            await bus.nc.subscribe(f"{DOMAIN}.*.cancel_requested", cb=self._on_cancel)

    async def _on_cancel(self, msg: Any) -> None:
        for task in self.running.get(msg.subject.split(".")[1], ()):
            task.cancel()


_watches: weakref.WeakKeyDictionary[Bus, _Watch] = weakref.WeakKeyDictionary()


class TaskHandler:
    def __init__(self, fn: Action, input_type: Any) -> None:
        self.fn = fn
        self.input_type = input_type

    async def handle(self, task: StepTask, envelope: Envelope[StepTask]) -> None:
        bus = current_bus()
        store = EventStore(bus)
        seq = envelope.seq or 0
        wait = task.not_before - time.time()
        if wait > 0:  # a retry's backoff (the history, not this process, holds the schedule)
            await asyncio.sleep(wait)
        claimed = await self._claim(store, task, seq)
        if claimed is None:
            return
        watch = _watches.setdefault(bus, _Watch())
        await watch.ensure(bus)
        started = time.monotonic()
        outcome = await self._run(task, watch)
        if outcome is None:
            return  # the run was cancelled: nothing to record
        seconds = time.monotonic() - started
        if isinstance(outcome, StepCompleted | StepFailed):
            landed = Landed(task_seq=seq, claimed=claimed[0], claimed_after=claimed[1])
            outcome = msgspec.structs.replace(outcome, landed=landed)
        if await self._record(store, task, seq, outcome, claimed[0]):
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

    async def _claim(self, store: EventStore, task: StepTask, seq: int) -> tuple[int, int] | None:
        """The run's version once this task's attempt is recorded started, and the version
        it was recorded at (None: not ours to run; (0, 0): a compensation, recorded once)."""
        if task.compensation:
            return 0, 0
        started = StepStarted(step=task.step, attempt=task.attempt, task_seq=seq)
        version = task.version  # first without reading: at it, the step was ours to start
        for _ in range(MAX_TRIES):
            if not version:
                history, run = await load_run(store, task.run_id, task.origin)
                if not _claimable(run, task, seq):
                    return None
                version = history.version
            try:
                result = await store.append(
                    DOMAIN, task.run_id, [started], expected_version=version,
                    event_ids=[new_event_id()],
                )  # fmt: skip
                return result.version, version
            except ConcurrencyError:
                version = await _moved_on(store, task, version)
        raise ConcurrencyError(f"{DOMAIN}.{task.run_id}.*", 0, None)

    async def _record(
        self, store: EventStore, task: StepTask, seq: int, outcome: Event, version: int
    ) -> bool:
        """Append `outcome` while the history shows the attempt still ours. First at the
        version of our claim without reading (nothing since it: still ours by construction),
        then, if the run moved on meanwhile, from its history."""
        for _ in range(MAX_TRIES):
            if not version:
                history, run = await load_run(store, task.run_id, task.origin)
                if not _still_ours(run, task, seq):
                    return False
                version = history.version
            landed = getattr(outcome, "landed", None)
            if landed is not None:
                outcome = msgspec.structs.replace(
                    outcome, landed=msgspec.structs.replace(landed, after=version)
                )
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
    parallel step's claim or outcome: what held for this step at `version` holds still), or
    0 (read the whole history and check). Reads only the tail: the common refusal is cheap."""
    tail = await store.load(DOMAIN, task.run_id, since=version)
    others = (StepStarted, StepCompleted, StepFailed)
    if tail.events and all(
        isinstance(e.event, others) and e.event.step != task.step for e in tail.events
    ):
        return tail.version
    return 0


def _claimable(run: RunView, task: StepTask, seq: int) -> bool:
    step = run.steps.get(task.step)
    if step is None or run.finished or run.cancel_requested or step.scheduled != task.attempt:
        return False
    fresh = step.status == "pending" and step.attempts < task.attempt
    crashed = step.status == "running" and step.attempts == task.attempt and step.task_seq == seq
    return fresh or crashed


def _still_ours(run: RunView, task: StepTask, seq: int) -> bool:
    step = run.steps.get(task.step)
    if step is None or run.finished:
        return False
    if task.compensation:
        return step.compensation == "scheduled"
    return step.status == "running" and step.attempts == task.attempt and step.task_seq == seq


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
