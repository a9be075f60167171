"""A workflow run's history as events, and the fold that turns it into the run's state.

Every run is an aggregate of the `wf` domain: stream `WF`, subjects `wf.<run_id>.<name>`
(`run_id` is `<workflow>-<uuid7>`, so runs of a workflow sort together and by start time).

A record that schedules steps is their task: it is stored under the name `task_<action>` of
the steps' action (`routed_name`), so that action's consumer takes it, and a step is
`running` from that record until its outcome. Whoever records something decides what
follows, and what follows an outcome rides on it: the steps it lets start (`scheduled`: a
run's start is its first steps' task, a step's outcome the next steps' task; steps of
another action get records of their own), or, after the last step, the run's completion
(which then carries that outcome: `outcomes` finds it). An outcome recorded by a worker that does not
declare the run's workflow is stored as `decide`, for the orchestrator (bus._orchestrator).

`apply` is the one fold (`apply_run` of a stored event): the orchestrator and the workers fold
a run's history with it to decide, and the `workflow_runs` projection (key: run id) folds the
stream with it for queries.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._envelope import Envelope, rfc3339
from ._events import Event
from ._projection import Projection
from ._store import EventStore, History
from ._streams import StreamSpec

DOMAIN = "wf"
TASK = "task_"  # + an action: the name its steps' records are stored under
DECIDE = "decide"  # an outcome whose worker leaves the decision to the orchestrator
RUNS_PROJECTION = "workflow_runs"
TERMINAL = ("completed", "failed", "cancelled")


class StepShape(msgspec.Struct, frozen=True, array_like=True):
    name: str
    action: str
    depends_on: tuple[str, ...] = ()


class Scheduled(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a step to run, with what its worker needs without the definition."""

    step: str
    action: str = ""  # (runs recorded before records were their tasks read as "")
    attempt: int
    input: Any  # None on a retry the orchestrator decided: the history has the first's
    not_before: float = 0.0  # epoch seconds: a retry waits for its backoff
    timeout: float | None = None
    retry_delay: float | None = None  # None: this is the last attempt


class RunStarted(Event):
    """The run's start, with the steps it starts with (of one action: the record is their
    task); none when an input function failed (its failure is recorded next)."""

    __domain__ = DOMAIN
    __event_name__ = "started"
    workflow: str
    version: str
    input: Any
    steps: list[StepShape]
    scheduled: list[Scheduled] = []


class StepsScheduled(Event):
    """Steps of one action to run now, of one decision."""

    __domain__ = DOMAIN
    __event_name__ = "steps_scheduled"
    steps: list[Scheduled]
    origin: int = 0  # the sequence of the run's first event (0: unknown): see load_run


class StepCompleted(Event):
    """An attempt's outcome, the only record a worker makes of it (no claim before):
    `started_at` is when its handler began; `scheduled`, the steps it lets start (of one
    action: the record is their task)."""

    __domain__ = DOMAIN
    __event_name__ = "step_completed"
    step: str
    attempt: int
    output: Any
    seconds: float = 0.0
    origin: int = 0
    started_at: str | None = None
    scheduled: list[Scheduled] = []


class StepFailed(Event):
    """A failed attempt; `scheduled` holds its retry, when one follows."""

    __domain__ = DOMAIN
    __event_name__ = "step_failed"
    step: str
    attempt: int
    error: str
    will_retry: bool = False
    retry_at: float = 0.0
    origin: int = 0
    started_at: str | None = None
    scheduled: list[Scheduled] = []


class StepsSkipped(Event):
    __domain__ = DOMAIN
    __event_name__ = "steps_skipped"
    steps: list[str]
    reason: str


class CompensationScheduled(Event):
    """The task of a compensation: `action` run on the completed step's output."""

    __domain__ = DOMAIN
    __event_name__ = "compensation_scheduled"
    step: str
    action: str
    input: Any
    origin: int = 0


class StepCompensated(Event):
    __domain__ = DOMAIN
    __event_name__ = "step_compensated"
    step: str
    error: str | None = None
    origin: int = 0


class RunCompleted(Event):
    """The run's end, with its last step's outcome when that is what completed it (one
    record: what follows an outcome rides on it)."""

    __domain__ = DOMAIN
    __event_name__ = "completed"
    output: Any
    step: StepCompleted | None = None


class RunFailed(Event):
    __domain__ = DOMAIN
    __event_name__ = "failed"
    error: str


class CancelRequested(Event):
    __domain__ = DOMAIN
    __event_name__ = "cancel_requested"
    reason: str = ""
    origin: int = 0


class RunCancelled(Event):
    __domain__ = DOMAIN
    __event_name__ = "cancelled"


RUN_EVENTS: tuple[type[Event], ...] = (
    RunStarted,
    StepsScheduled,
    StepCompleted,
    StepFailed,
    StepsSkipped,
    CompensationScheduled,
    StepCompensated,
    RunCompleted,
    RunFailed,
    CancelRequested,
    RunCancelled,
)
TASKS = (RunStarted, StepsScheduled, StepCompleted, StepFailed, CompensationScheduled)


class StepView(msgspec.Struct, kw_only=True):
    """A step of a run: status pending|running|completed|failed|skipped|cancelled."""

    status: str = "pending"
    action: str = ""
    depends_on: tuple[str, ...] = ()
    attempts: int = 0
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    scheduled: int = 0  # the attempt last scheduled (0: never)
    not_before: float = 0.0
    compensation: str | None = None  # scheduled | done | failed: <error>


class RunView(msgspec.Struct, kw_only=True):
    """A run: status running|completed|failed|cancelled; `seq` is its last event's."""

    run_id: str = ""
    workflow: str = ""
    version: str = ""
    status: str = "running"
    input: Any = None
    output: Any = None
    error: str | None = None
    steps: dict[str, StepView] = {}
    started_at: str | None = None
    ended_at: str | None = None
    cancel_requested: bool = False
    seq: int = 0
    origin: int = 0  # the sequence of its first event: loads start there

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """The run as the API shows it (without the engine's bookkeeping)."""
        hidden = {"scheduled", "not_before"}
        out: dict[str, Any] = msgspec.to_builtins(self)
        del out["cancel_requested"], out["origin"]
        out["steps"] = {
            name: {k: v for k, v in step.items() if k not in hidden}
            for name, step in out["steps"].items()
        }
        return out


def scheduled_by(event: Event) -> list[Scheduled]:
    """The steps `event` schedules (it is their task)."""
    match event:
        case StepsScheduled(steps=steps):
            return steps
        case RunStarted(scheduled=steps) | StepCompleted(scheduled=steps):
            return steps
        case StepFailed(scheduled=steps):
            return steps
    return []


def outcomes(event: Event) -> list[StepCompleted | StepFailed]:
    """The step outcomes `event` records (a run's completion carries its last step's)."""
    match event:
        case StepCompleted() | StepFailed():
            return [event]
        case RunCompleted(step=StepCompleted() as last):
            return [last]
    return []


def routed_name(event: Event) -> str | None:
    """The name `event` is stored under when it is a task (None: its own): `task_<action>`
    for a record scheduling steps of that action, or the compensating action's."""
    if isinstance(event, CompensationScheduled):
        return TASK + event.action
    scheduled = scheduled_by(event)
    return TASK + scheduled[0].action if scheduled else None


def origin_of(envelope: Envelope[Event]) -> int:
    """The sequence of the run's first event, as `envelope` knows it (0: unknown)."""
    if isinstance(envelope.event, RunStarted):
        return envelope.seq or 0
    return int(getattr(envelope.event, "origin", 0))


def workflow_of(run_id: str) -> str:
    """The workflow a run id names (`<workflow>-<id>`: workflow names hold no `-`)."""
    return run_id.partition("-")[0]


def run_id_of(envelope: Envelope[Event]) -> str | None:
    return envelope.subject.split(".")[1] if envelope.subject.startswith("wf.") else None


def _set(steps: dict[str, StepView], name: str, **changes: Any) -> None:
    steps[name] = msgspec.structs.replace(steps.get(name) or StepView(), **changes)


def _schedule(steps: dict[str, StepView], scheduled: list[Scheduled], at: str) -> None:
    """Scheduled is running: the record is its task (started_at: the record's time, or its
    backoff's end; the outcome says when its handler began)."""
    for one in scheduled:
        begins = max(at, rfc3339(one.not_before)) if one.not_before else at
        _set(steps, one.step, status="running", scheduled=one.attempt, attempts=one.attempt,
             not_before=one.not_before, started_at=begins, ended_at=None)  # fmt: skip


def _began(stamp: str | None) -> dict[str, str]:
    return {"started_at": stamp} if stamp else {}


def apply_run(run: RunView, envelope: Envelope[Event]) -> RunView:
    """Fold one stored event of a run's history into its state (pure)."""
    event = envelope.event
    run_id = (run_id_of(envelope) or "") if isinstance(event, RunStarted) else run.run_id
    return apply(run, event, envelope.occurred_at, envelope.seq or 0, run_id)


def apply(run: RunView, event: Event, at: str, seq: int, run_id: str = "") -> RunView:
    """`event`, stored at `seq` (0: unknown) at time `at`, folded into `run` (pure: what
    changes is a copy of `run`, made once, with its own steps); `run_id` names a start's run.
    What a process just stored itself is folded so too, with no envelope made for it."""
    if isinstance(event, RunStarted):
        started = RunView(
            run_id=run_id,
            workflow=event.workflow,
            version=event.version,
            input=event.input,
            steps={s.name: StepView(action=s.action, depends_on=s.depends_on) for s in event.steps},
            started_at=at,
            seq=seq,
            origin=seq,
        )
        _schedule(started.steps, event.scheduled, at)
        return started
    run = msgspec.structs.replace(run, seq=seq or run.seq, steps=dict(run.steps))
    steps = run.steps
    match event:
        case StepsScheduled(steps=scheduled):
            _schedule(steps, scheduled, at)
        case StepCompleted(step=name, output=output, started_at=began, scheduled=scheduled):
            _set(steps, name, status="completed", output=output, error=None, ended_at=at,
                 **_began(began))  # fmt: skip
            _schedule(steps, scheduled, at)
        case StepFailed(step=name, error=error, will_retry=retry, retry_at=t, started_at=began,
                        scheduled=scheduled):  # fmt: skip
            _set(steps, name, status="pending" if retry else "failed", error=error, ended_at=at,
                 not_before=t, **_began(began))  # fmt: skip
            _schedule(steps, scheduled, at)
        case StepsSkipped(steps=names):
            for name in names:
                _set(steps, name, status="skipped")
        case CompensationScheduled(step=name):
            _set(steps, name, compensation="scheduled")
        case StepCompensated(step=name, error=error):
            _set(steps, name, compensation="done" if error is None else f"failed: {error}")
        case RunCompleted(output=output, step=last):
            if last is not None:
                run = apply(run, last, at, seq)
            run.status, run.output, run.ended_at = "completed", output, at
        case RunFailed(error=error):
            run.status, run.error, run.ended_at = "failed", error, at
        case CancelRequested():
            run.cancel_requested = True
        case RunCancelled():
            for name, step in steps.items():
                if step.status in ("pending", "running"):
                    _set(steps, name, status="cancelled", ended_at=at)
            run.status, run.ended_at = "cancelled", at
    return run


def fold(events: list[Envelope[Event]]) -> RunView:
    run = RunView()
    for envelope in events:
        run = apply_run(run, envelope)
    return run


async def load_run(store: EventStore, run_id: str, origin: int = 0) -> tuple[History, RunView]:
    """The run's history and state, fresh. Reading from `origin`, the sequence of its first
    event, when known: a read by subject from the stream's start would look through every
    run before it."""
    history = await store.load(DOMAIN, run_id, since=max(origin - 1, 0))
    if origin and not (history.events and isinstance(history.events[0].event, RunStarted)):
        history = await store.load(DOMAIN, run_id)  # a wrong origin: read it all
    return history, fold(history.events)


def runs_projection() -> Projection[RunView]:
    return Projection(RUNS_PROJECTION, (f"{DOMAIN}.>",), RunView, run_id_of, apply_run)


def workflow_streams() -> list[StreamSpec]:
    return [StreamSpec.for_domain(DOMAIN, description="workflow runs' histories and tasks")]
