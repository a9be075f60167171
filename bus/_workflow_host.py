"""How an App hosts workflows: their streams, events, run projection and handlers.

Declaring the first workflow (or action) adds the `WF` stream, the run events and the
`workflow_runs` projection to the app; each workflow adds nothing more (one orchestrator
handler per app decides what no worker did, in runs of all its workflows), each action one
handler. So any `bus worker` / `bus up` of the app runs its actions and decides its runs;
its handlers share what the process knows of the runs (bus._workflow_known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import ConfigError
from ._events import EventRegistry
from ._orchestrator import UNDECIDED, Orchestrator
from ._projection import Projection
from ._streams import StreamSpec
from ._subjects import validate_token
from ._subscribe import HandlerSpec, Router, handler_spec
from ._workflow import Workflow
from ._workflow_events import (
    DECIDE,
    DOMAIN,
    RUN_EVENTS,
    RUNS_PROJECTION,
    CancelRequested,
    RunStarted,
    runs_projection,
    workflow_streams,
)
from ._workflow_known import Known
from ._workflow_tasks import Action, action_spec

# Records the orchestrator decides on at once per instance (cancels; every outcome where the
# actions' workers do not declare the workflow: then 64 runs in flight would queue behind 16).
ORCHESTRATOR_CONCURRENCY = 32


class WorkflowHost:
    """The workflow part of an App (it hands in its lists, which this fills)."""

    def __init__(
        self,
        app: str,
        streams: list[StreamSpec],
        projections: dict[str, Projection[Any]],
        registry: EventRegistry,
        router: Router,
    ) -> None:
        self.app = app
        self.streams, self.projections = streams, projections
        self.registry, self.router = registry, router
        self.workflows: dict[str, Workflow[Any]] = {}
        self.known = Known()  # the runs as this app's handlers in a process last saw them

    def define(self, workflow: Workflow[Any]) -> Workflow[Any]:
        if workflow.name in self.workflows:
            raise ConfigError(f"workflow {workflow.name!r} is declared twice")
        self._install()
        if not self.workflows:
            durable = validate_token(f"wf-orchestrator-{self.app}", "app name")
            orchestrator = Orchestrator(self.workflows, self.known)
            names = (RunStarted.__event_name__, CancelRequested.__event_name__, DECIDE)
            self._add(
                handler_spec(
                    orchestrator.handle,
                    tuple(f"{DOMAIN}.*.{name}" for name in names),
                    durable=durable,
                    events=UNDECIDED,
                    concurrency=ORCHESTRATOR_CONCURRENCY,
                    max_deliver=1000,
                    ack_wait=5.0,  # a decision held by a dead instance is made again after it
                )
            )
        self.workflows[workflow.name] = workflow
        return workflow

    def action(self, name: str, **options: Any) -> Callable[[Action], Action]:
        def decorator(fn: Action) -> Action:
            self._install()
            self._add(action_spec(name, fn, self.workflows, self.known, **options))
            return fn

        return decorator

    def _add(self, spec: HandlerSpec) -> None:
        if any(s.durable == spec.durable for s in self.router.specs):
            raise ConfigError(f"durable name {spec.durable!r} is used twice")
        self.router.specs.append(spec)

    def _install(self) -> None:
        names = {s.name for s in self.streams}
        self.streams.extend(s for s in workflow_streams() if s.name not in names)
        for cls in RUN_EVENTS:
            self.registry.register(cls)
        self.projections.setdefault(RUNS_PROJECTION, runs_projection())
