"""`App`: what a runnable service declares — streams, events, handlers and projections.

`bus up --app module:attr` loads one (the uvicorn convention) and runs it on a Bus.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from ._buckets import BucketSpec
from ._errors import ConfigError
from ._events import Event, EventRegistry
from ._projection import Projection
from ._streams import StreamSpec
from ._subscribe import Handler, Responds, Router
from ._workflow import Workflow
from ._workflow_host import WorkflowHost
from ._workflow_tasks import Action


class App:
    def __init__(
        self,
        name: str,
        *,
        streams: Iterable[StreamSpec] = (),
        events: Iterable[type[Event]] = (),
        router: Router | None = None,
        projections: Iterable[Projection[Any]] = (),
        buckets: Iterable[BucketSpec] = (),
    ) -> None:
        self.name = name
        self.streams = list(streams)
        self.registry = EventRegistry(events)
        self.router = router if router is not None else Router()
        self.projections = {p.name: p for p in projections}
        self._workflows = WorkflowHost(
            name, self.streams, self.projections, self.registry, self.router
        )
        self.workflows = self._workflows.workflows
        self.known_runs = self._workflows.known  # runs as this process's deciders last saw them
        self.buckets = {b.name: b for b in buckets}  # shared state (JetStream KV) by name

    def projection(self, name: str) -> Projection[Any]:
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(sorted(self.projections)) or "none"
            raise ConfigError(
                f"no projection {name!r} in app {self.name!r} (known: {known})"
            ) from None

    def subscribe(
        self, subject: str | None = None, *, durable: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        return self.router.subscribe(subject, durable=durable, **options)

    def workflow(self, workflow: Workflow[Any]) -> Workflow[Any]:
        """Declare a workflow: every worker of this app orchestrates its runs."""
        return self._workflows.define(workflow)

    def action(self, name: str, **options: Any) -> Callable[[Action], Action]:
        """Decorator: run the workflow steps of action `name` (options as for `subscribe`)."""
        return self._workflows.action(name, **options)

    def serve(
        self, subject: str, *, service: str | None = None, **options: Any
    ) -> Callable[[Responds], Responds]:
        """Decorator: a responder on `subject`, hosted by `bus worker` and `bus up`, in the
        nats.micro service `service` (default: the app's name)."""
        return self.router.serve(subject, service=service or self.name, **options)


def load_app(ref: str) -> App:
    """Import `package.module:attribute` and check it is an App."""
    module_name, _, attr = ref.partition(":")
    names = [*module_name.split("."), attr]
    if not module_name or not attr or not all(name.isidentifier() for name in names):
        raise ConfigError(f"--app takes module:attribute (dotted Python names), not {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{ref} is not a bus.App (found {type(app).__name__})")
    return app
