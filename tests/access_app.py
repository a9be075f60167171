"""The app the permission and auth-matrix tests serve: the demo's tasks (stream, events,
projections, the `settings` bucket, the `tasks.get` responder, also on `tasks.find`), a
second bucket, and two one-step workflows; so every surface of the edge has something to
reach."""

from __future__ import annotations

import msgspec

from bus import App, BucketSpec, Step, Workflow
from services import demo

ACCESS_BUCKETS = [*demo.app.buckets.values(), BucketSpec("notes")]


class Job(msgspec.Struct):
    text: str = "x"


def make_app() -> App:
    """A fresh app each time (a workflow's actions join the app's router)."""
    app = App(
        "access",
        streams=demo.app.streams,
        events=[demo.TaskCreated, demo.TaskProgressed, demo.TaskCompleted, demo.TaskFailed],
        projections=demo.app.projections.values(),
        buckets=ACCESS_BUCKETS,
    )
    app.serve("tasks.get")(demo.get_task)
    app.serve("tasks.find")(demo.get_task)
    for name in ("review", "ship"):
        app.workflow(Workflow(name, Job, [Step("check", action="noop")]))

    @app.action("noop")
    async def noop(job: Job) -> Job:
        return job

    return app
