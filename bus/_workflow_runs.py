"""`Workflows`: start, query and cancel runs of an app's workflows (what the surfaces use).

    runs = Workflows(bus, app)
    started = await runs.start("code_analysis", {"code": src, "language": "python"})
    view = await runs.get(started.run_id, after_seq=started.seq)   # read-your-writes
    page, cursor = await runs.list("code_analysis", status="running", limit=20)
    await runs.cancel(started.run_id)
    async for view in runs.follow(started.run_id): ...             # each event, as it lands

`get` and `list` read the `workflow_runs` projection (run by the projector, like every
projection; `after_seq` waits for it to have seen that sequence); `history` and `follow`
fold the run's own events, fresh. An `idempotency_key` makes the run id, so starting again
with the same key answers the run it started (whatever the input this time).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ._app import App
from ._client import Bus
from ._errors import BusTimeout, ConcurrencyError, ConfigError
from ._events import new_event_id
from ._orchestrator import advance, append, at_origin, first_steps
from ._projection import ProjectionView
from ._store import EventStore
from ._subjects import validate_token
from ._workflow import Workflow
from ._workflow_events import (
    DOMAIN,
    RUN_EVENTS,
    RUNS_PROJECTION,
    CancelRequested,
    RunStarted,
    RunView,
    StepShape,
    apply_run,
    fold,
)

SCAN = 1000  # runs read per page while filtering by status


class Started(msgspec.Struct, frozen=True):
    """A run as started (or cancelled): where its last event landed."""

    run_id: str
    workflow: str
    status: str
    stream: str
    seq: int


class Workflows:
    def __init__(self, bus: Bus, app: App) -> None:
        self._bus = bus
        self._app = app
        self._store = EventStore(bus)
        self._view: ProjectionView[RunView] | None = None
        self._shaped: dict[str, builtins.list[StepShape]] = {}
        for cls in RUN_EVENTS:
            bus.registry.register(cls)

    @property
    def view(self) -> ProjectionView[RunView]:
        if self._view is None:
            self._view = ProjectionView(self._bus, self._app.projection(RUNS_PROJECTION))
        return self._view

    def definition(self, name: str) -> Workflow[Any]:
        try:
            return self._app.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._app.workflows)) or "none"
            raise ConfigError(
                f"no workflow {name!r} in app {self._app.name!r} (known: {known})"
            ) from None

    def _shapes(self, workflow: Workflow[Any]) -> builtins.list[StepShape]:
        """The DAG as a run's start records it (made once per workflow)."""
        shapes = self._shaped.get(workflow.name)
        if shapes is None:
            shapes = [StepShape(s.name, s.action, tuple(s.depends_on)) for s in workflow.steps]
            self._shaped[workflow.name] = shapes
        return shapes

    def definitions(self) -> builtins.list[dict[str, Any]]:
        """Every workflow of the app, with its input schema and DAG."""
        return [w.describe() for _, w in sorted(self._app.workflows.items())]

    async def start(self, name: str, input: Any, *, idempotency_key: str | None = None) -> Started:
        """Record a new run of `name` (its input checked: ConfigError if it does not fit)."""
        workflow = self.definition(name)
        try:
            typed = input if isinstance(input, workflow.input_type) else workflow.parse_input(input)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"input of workflow {name!r}: {exc}") from None
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
            run_id = f"{name}-{digest}"
        else:
            run_id = f"{name}-{new_event_id()}"
        started = RunStarted(workflow=name, version=workflow.version,
                             input=msgspec.to_builtins(typed), steps=self._shapes(workflow))  # fmt: skip
        event, others = first_steps(run_id, started, workflow, typed)
        known = self._app.known_runs  # (a worker of this process then needs no read)
        async with known.deciding(run_id):
            try:  # (a run new to the stream: its version is 0)
                result = await append(self._store, RunView(run_id=run_id), event)
            except ConcurrencyError:
                if idempotency_key is None:
                    raise
                run = await self.history(run_id)
                assert run is not None
                return Started(run_id, name, run.status, EventStore.stream_of(DOMAIN), run.seq)
            run = known.recorded(run_id, RunView(), event, result.seq)
            if others:  # the first steps of other actions: records (their tasks) of their own
                await advance(self._store, run_id, result.seq, self._app.workflows, known,
                              run, at_origin(others, result.seq))  # fmt: skip
        return Started(run_id, name, "running", result.stream, result.seq)

    async def get(self, run_id: str, after_seq: int | None = None) -> RunView | None:
        """The run as the projection has it (once it has seen `after_seq`); None if unknown."""
        validate_token(run_id, "run id")
        if after_seq is not None:
            await self.view.wait_for(after_seq)
        found = await self.view.get(run_id)
        return None if found is None else found[0]

    async def history(self, run_id: str) -> RunView | None:
        """The run folded from its own events now (None if it has none)."""
        history = await self._store.load(DOMAIN, validate_token(run_id, "run id"))
        return fold(history.events) if history.events else None

    async def list(
        self, name: str, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[builtins.list[RunView], str | None]:
        """Runs of `name` oldest first, from after `cursor`; the page and the next cursor."""
        self.definition(name)
        if not 1 <= limit <= 1000:
            raise ConfigError("limit must be between 1 and 1000")
        out: builtins.list[RunView] = []
        while True:
            page, cursor = await self.view.list(f"{name}-", SCAN if status else limit, cursor)
            for key, run in page:
                if status is None or run.status == status:
                    out.append(run)
                    if len(out) == limit:
                        more = cursor is not None or key != page[-1][0]
                        return out, (key if more else None)
            if cursor is None:
                return out, None

    async def counts(self) -> dict[str, dict[str, Any]]:
        """Per workflow, its runs by status and each step's by status (for `bus status`):
        `{"code_analysis": {"runs": {"completed": 3}, "steps": {"parse": {...}}}}`."""
        out: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            page, cursor = await self.view.list("", SCAN, cursor)
            for _, run in page:
                counts = out.setdefault(run.workflow, {"runs": {}, "steps": {}})
                _count(counts["runs"], run.status)
                for name, step in run.steps.items():
                    _count(counts["steps"].setdefault(name, {}), step.status)
            if cursor is None:
                return out

    async def cancel(self, run_id: str, reason: str = "") -> Started | None:
        """Ask the run to stop (None if there is no such run): what runs is stopped, the
        completed steps' compensations run, then it is cancelled. A finished run stays as it
        is: the answer then shows its status."""
        while True:
            history = await self._store.load(DOMAIN, validate_token(run_id, "run id"))
            if not history.events:
                return None
            run = fold(history.events)
            stream = EventStore.stream_of(DOMAIN)
            if run.finished or run.cancel_requested:
                return Started(run_id, run.workflow, run.status, stream, run.seq)
            try:
                result = await self._store.append(
                    DOMAIN,
                    run_id,
                    [CancelRequested(reason=reason, origin=run.origin)],
                    expected_version=history.version,
                )
            except ConcurrencyError:
                continue
            return Started(run_id, run.workflow, run.status, result.stream, result.version)

    async def follow(self, run_id: str) -> AsyncIterator[RunView]:
        """The run after each of its events, from the first, until it has finished."""
        run = RunView()
        tail = self._bus.tail(f"{DOMAIN}.{validate_token(run_id, 'run id')}.*", 1)
        async with contextlib.aclosing(tail) as messages:
            async for message in messages:
                run = apply_run(run, self._bus.open(message))
                yield run
                if run.finished:
                    return

    async def wait(self, run_id: str, timeout: float = 30.0) -> RunView:
        """The run once it has finished (BusTimeout after `timeout` seconds)."""
        run = RunView()
        try:
            async with asyncio.timeout(timeout):
                async for view in self.follow(run_id):
                    run = view
        except TimeoutError:
            raise BusTimeout(f"run {run_id!r} did not finish in {timeout:g}s") from None
        return run


def _count(counts: dict[str, int], status: str) -> None:
    counts[status] = counts.get(status, 0) + 1
