"""The demo domain `bus up` runs by default: tasks (names relied on by other tools, see DESIGN.md).

A worker handles `tasks.<id>.created`: it fails `fail_times` times before completing, so a
task with `fail_times >= max_deliver` (5) ends in the dead-letter stream `DLQ_TASKS`.
Projections: `task` (task id → status, title, attempts, version) and `task_counts`
(status → how many times tasks entered it). The workers answer `tasks.get` requests
(`{"id": ...}`) with a task's `task` state; an unknown id is a 404.
"""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec

from bus import (
    App,
    BucketSpec,
    Envelope,
    Event,
    Projection,
    ProjectionView,
    ServiceError,
    StreamSpec,
    current_bus,
)

log = logging.getLogger("tasks")
MAX_DELIVER = 5
EVENTS = "tasks.*.*"  # what the stream and projections hold: tasks.<id>.<event>
MAX_ID = 128  # characters of a task id a request may ask for


class TaskCreated(Event):
    __domain__ = "tasks"
    __event_name__ = "created"
    title: str
    fail_times: int = 0


class TaskProgressed(Event):
    __domain__ = "tasks"
    __event_name__ = "progressed"
    attempt: int
    note: str = ""


class TaskCompleted(Event):
    __domain__ = "tasks"
    __event_name__ = "completed"
    attempts: int


class TaskFailed(Event):
    __domain__ = "tasks"
    __event_name__ = "failed"
    attempt: int
    reason: str


class TaskView(msgspec.Struct):
    """Projection `task`, keyed by task id."""

    status: str = "new"
    title: str = ""
    attempts: int = 0
    version: int = 0  # stream sequence of the task's last event


class StatusCount(msgspec.Struct):
    """Projection `task_counts`, keyed by status: how many times tasks entered it."""

    count: int = 0


STATUS_OF = {"created": "created", "progressed": "running", "completed": "completed"}
STATUS_OF["failed"] = "failed"


def task_id(envelope: Envelope[Event]) -> str:
    return envelope.subject.split(".")[1]


def apply_task(view: TaskView, envelope: Envelope[Event]) -> TaskView:
    seq = envelope.seq or view.version
    match envelope.event:
        case TaskCreated(title=title):
            return TaskView(status="created", title=title, attempts=0, version=seq)
        case TaskProgressed(attempt=attempt):
            return msgspec.structs.replace(view, status="running", attempts=attempt, version=seq)
        case TaskFailed(attempt=attempt):
            return msgspec.structs.replace(view, status="failed", attempts=attempt, version=seq)
        case TaskCompleted(attempts=attempts):
            return msgspec.structs.replace(view, status="completed", attempts=attempts, version=seq)
    return view


def status_key(envelope: Envelope[Event]) -> str | None:
    return STATUS_OF.get(envelope.subject.rsplit(".", 1)[-1])


def count(state: StatusCount, envelope: Envelope[Event]) -> StatusCount:
    return StatusCount(state.count + 1)


app = App(
    "tasks",
    # Events are tasks.<id>.<event>. On tasks.> the stream would also store (and answer) the
    # tasks.get requests the app serves, and the projector's wake-ups hear them.
    streams=[StreamSpec("TASKS", (EVENTS,))],
    events=[TaskCreated, TaskProgressed, TaskCompleted, TaskFailed],
    projections=[
        Projection("task", (EVENTS,), TaskView, task_id, apply_task),
        Projection("task_counts", (EVENTS,), StatusCount, status_key, count),
    ],
    buckets=[BucketSpec("settings", history=10)],  # shared state: /api/v1/kv/settings/...
)


class DemoFailure(RuntimeError):
    """The failure a demo task asks for with `fail_times`."""


@app.subscribe(durable="tasks-worker", max_deliver=MAX_DELIVER)
async def run_task(event: TaskCreated, envelope: Envelope[TaskCreated]) -> None:
    bus = current_bus()
    task_id = envelope.subject.split(".")[1]
    attempt = envelope.attempt
    await bus.publish(TaskProgressed(attempt=attempt, note="started"), task_id)
    if attempt <= event.fail_times:
        await bus.publish(TaskFailed(attempt=attempt, reason="asked to fail"), task_id)
        raise DemoFailure(f"task {task_id}: failing attempt {attempt} of {event.fail_times}")
    await bus.publish(TaskCompleted(attempts=attempt), task_id)
    log.info("task %s completed on attempt %d", task_id, attempt)


class GetTask(msgspec.Struct, forbid_unknown_fields=True):
    """A `tasks.get` request."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]


@app.serve("tasks.get")
async def get_task(request: GetTask) -> TaskView:
    """A task's state in the `task` projection (as of its last checkpoint)."""
    view: ProjectionView[TaskView] = ProjectionView(current_bus(), app.projection("task"))
    found = await view.get(request.id)
    if found is None:
        raise ServiceError(404, f"no task {request.id!r}")
    return found[0]
