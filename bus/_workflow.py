"""Workflow definitions: a typed input and named steps forming a DAG, checked when declared.

    class Review(msgspec.Struct):
        code: str
        language: str = "python"

    review = Workflow("review", Review, [
        Step("parse", action="parse", input=lambda ctx: ParseInput(ctx.input.code)),
        Step("score", action="score", depends_on=("parse",), retries=2,
             input=lambda ctx: ctx.output("parse", Parsed)),
    ])
    app.workflow(review)

A step runs its `action` (whichever component registers a handler for it) on what its
`input` function returns from the run context: the workflow input, typed, and earlier
steps' outputs decoded to the type asked (`ctx.output("parse", Parsed)`): the typed form of
`${tasks.parse.output.ast}`. A dependency that is unknown, a cycle or a duplicate name is a
ConfigError naming it. A handler raises `PermanentError` for a failure no retry can fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from ._errors import BusError, ConfigError
from ._subjects import validate_token
from ._subscribe import Backoff

I = TypeVar("I")  # noqa: E741 - the input type, as in Workflow[I]
T = TypeVar("T")


class PermanentError(BusError):
    """Raised by an action for a failure that retrying cannot fix: the step fails at once
    (in the BusError tree, as `ServiceError` is for a responder's own errors)."""


def describe_error(exc: BaseException) -> str:
    """How a failure is recorded in a run's history (bounded)."""
    return f"{type(exc).__name__}: {exc}"[:2000]


def check_name(name: str, what: str) -> str:
    """Letters, digits and _ only: a name that can be a subject token and key prefix."""
    validate_token(name, what)
    if not name.replace("_", "a").isalnum() or not name.isascii():
        raise ConfigError(f"{what} {name!r}: letters, digits and _ only")
    return name


class RunContext(Generic[I]):
    """What a step's input function sees: the run's input and earlier steps' outputs."""

    def __init__(self, run_id: str, input: I, outputs: dict[str, Any]) -> None:
        self.run_id = run_id
        self.input = input
        self._outputs = outputs

    def output(self, step: str, as_type: type[T]) -> T:
        """The output of `step` (a dependency, completed), decoded to `as_type`."""
        if step not in self._outputs:
            raise ConfigError(f"step {step!r} has no output here (is it a dependency?)")
        return msgspec.convert(self._outputs[step], as_type)


def _default_input(ctx: RunContext[Any]) -> Any:
    return ctx.input


@dataclass(frozen=True)
class Step:
    """One node of the DAG. `retries` more attempts after a failure, `backoff` between them;
    `timeout` seconds per attempt (None: no limit); `compensate` an action run on this
    step's output when the run fails after it completed."""

    name: str
    action: str
    depends_on: tuple[str, ...] = ()
    input: Callable[[RunContext[Any]], Any] = _default_input
    retries: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.05, max=5.0))
    timeout: float | None = None
    compensate: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "step name")
        check_name(self.action, "action name")
        if self.compensate is not None:
            check_name(self.compensate, "compensating action name")
        if isinstance(self.depends_on, str):
            raise ConfigError(f"step {self.name!r}: depends_on is a sequence of step names")
        if self.retries < 0 or (self.timeout is not None and self.timeout <= 0):
            raise ConfigError(f"step {self.name!r}: retries must be >= 0 and timeout > 0")


@dataclass(frozen=True)
class Workflow(Generic[I]):
    """A named DAG of steps over a typed input; `output` makes the run's output from the
    context (default: the outputs of the steps nothing depends on, by name)."""

    name: str
    input_type: type[I]
    steps: Sequence[Step]
    output: Callable[[RunContext[I]], Any] | None = None
    order: tuple[str, ...] = field(init=False, default=())  # a topological order
    version: str = field(init=False, default="")  # a digest of the DAG's shape
    leaves: tuple[str, ...] = field(init=False, default=())  # the steps nothing depends on
    roots: tuple[str, ...] = field(init=False, default=())  # the steps depending on nothing
    _by_name: dict[str, Step] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name, "workflow name")
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise ConfigError(f"workflow {self.name!r} needs at least one step")
        object.__setattr__(self, "order", topological_order(self.name, self.steps))
        # Runs record the version, so a changed definition shows; made once (every start).
        shape = [(s.name, s.action, s.depends_on, s.retries, s.compensate) for s in self.steps]
        version = hashlib.sha256(repr(shape).encode()).hexdigest()[:12]
        object.__setattr__(self, "version", version)
        self._by_name.update((s.name, s) for s in self.steps)
        needed = {d for step in self.steps for d in step.depends_on}
        object.__setattr__(
            self, "leaves", tuple(s.name for s in self.steps if s.name not in needed)
        )
        roots = tuple(name for name in self.order if not self._by_name[name].depends_on)
        object.__setattr__(self, "roots", roots)

    def step(self, name: str) -> Step:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"workflow {self.name!r} has no step {name!r}") from None

    def parse_input(self, raw: Any) -> I:
        """`raw` (decoded JSON) as the input type; msgspec.ValidationError if it does not fit."""
        return msgspec.convert(raw, self.input_type)

    def describe(self) -> dict[str, Any]:
        """The definition as data: its input schema and its DAG."""
        return {
            "name": self.name,
            "version": self.version,
            "input_schema": msgspec.json.schema(self.input_type),
            "steps": [
                {
                    "name": s.name,
                    "action": s.action,
                    "depends_on": list(s.depends_on),
                    "retries": s.retries,
                    "timeout": s.timeout,
                    "compensate": s.compensate,
                }
                for s in self.steps
            ],
        }


def topological_order(workflow: str, steps: Iterable[Step]) -> tuple[str, ...]:
    """Step names, each after its dependencies; ConfigError on a duplicate, an unknown
    dependency or a cycle (naming it)."""
    by_name: dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise ConfigError(f"workflow {workflow!r}: step {step.name!r} is declared twice")
        by_name[step.name] = step
    for step in by_name.values():
        for dep in step.depends_on:
            if dep not in by_name:
                raise ConfigError(
                    f"workflow {workflow!r}: step {step.name!r} depends on unknown step {dep!r}"
                )
            if dep == step.name:
                raise ConfigError(f"workflow {workflow!r}: step {dep!r} depends on itself")
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path being visited, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ConfigError(f"workflow {workflow!r}: dependency cycle {cycle}")
        state[name] = 1
        for dep in by_name[name].depends_on:
            visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in by_name:
        visit(name, [])
    return tuple(order)
