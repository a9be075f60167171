"""The app the console's browser tests run under a real `bus up` (`--app tests.console_app:app`):
the demo's tasks (its worker, projections, `settings` bucket) and the pipeline's
`code_analysis` workflow with its actions, built from their public parts only, and an auditor
reacting to the worker's `TaskCompleted` (its `TaskAudited` is caused by an event a handler
made: a derived id, UUIDv8, for the console's causation links). TASKS keeps duplicates for
1 s, so a dead letter can be replayed a second after it was first stored."""

from __future__ import annotations

import dataclasses

from bus import App, Envelope, Event, current_bus
from services import demo, pipeline


class TaskAudited(Event):
    __domain__ = "tasks"
    __event_name__ = "audited"
    attempts: int


app = App(
    demo.app.name,
    streams=[dataclasses.replace(s, duplicate_window=1.0) for s in demo.app.streams],
    events=[*demo.app.registry, TaskAudited],
    projections=demo.app.projections.values(),
    buckets=demo.app.buckets.values(),
)
app.router.include(demo.app.router)
app.workflow(pipeline.code_analysis)
for action in (
    pipeline.parse,
    pipeline.analyze_complexity,
    pipeline.security_scan,
    pipeline.generate_report,
):
    app.action(action.__name__)(action)


@app.subscribe(durable="tasks-auditor")
async def audit(event: demo.TaskCompleted, envelope: Envelope[demo.TaskCompleted]) -> None:
    await current_bus().publish(TaskAudited(event.attempts), demo.task_id(envelope))
