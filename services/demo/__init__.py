"""The demo domain `bus up` runs by default: tasks (names relied on by other tools, see DESIGN.md).

A worker handles `tasks.<id>.created`: it fails `fail_times` times before completing, so a
task with `fail_times >= max_deliver` (5) ends in the dead-letter stream `DLQ_TASKS`.
"""

from __future__ import annotations

from bus import App, Envelope, Event, StreamSpec, current_bus

MAX_DELIVER = 5


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


app = App(
    "tasks",
    streams=[StreamSpec.for_domain("tasks")],
    events=[TaskCreated, TaskProgressed, TaskCompleted, TaskFailed],
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
