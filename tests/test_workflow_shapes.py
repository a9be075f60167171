"""Definitions checked when declared, and random DAGs with random failures on a real server:
the recorded order respects every dependency and the final state is what the DAG implies."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import App, ConfigError, EventStore, PermanentError, Step, Workflow, Workflows
from bus._workflow_events import StepCompleted, outcomes, scheduled_by
from bus.testing import run_app


class Plan(msgspec.Struct):
    fail: list[str] = []  # steps that fail for good
    flaky: list[str] = []  # steps whose first attempt fails


class Order(msgspec.Struct):
    step: str
    fail: bool
    flaky: bool = False


def order(name: str):
    return lambda ctx: Order(name, name in ctx.input.fail, name in ctx.input.flaky)


def test_bad_definitions_are_config_errors_naming_the_problem() -> None:
    with pytest.raises(ConfigError, match="'b' depends on unknown step 'z'"):
        Workflow("w", Plan, [Step("a", "x"), Step("b", "x", depends_on=("z",))])
    with pytest.raises(ConfigError, match=r"cycle (a -> b -> a|b -> a -> b)"):
        Workflow("w", Plan, [Step("a", "x", depends_on=("b",)), Step("b", "x", ("a",))])
    with pytest.raises(ConfigError, match="'a' is declared twice"):
        Workflow("w", Plan, [Step("a", "x"), Step("a", "y")])
    with pytest.raises(ConfigError, match="depends on itself"):
        Workflow("w", Plan, [Step("a", "x", depends_on=("a",))])
    with pytest.raises(ConfigError, match="at least one step"):
        Workflow("w", Plan, [])
    for bad in ("a.b", "a b", "", "a-b", "*", "é"):
        with pytest.raises(ConfigError):
            Workflow(bad, Plan, [Step("a", "x")])
        with pytest.raises(ConfigError):
            Step(bad, "x")
        with pytest.raises(ConfigError):
            Step("a", bad)
    with pytest.raises(ConfigError, match="depends_on is a sequence"):
        Step("a", "x", depends_on="b")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Step("a", "x", retries=-1)
    with pytest.raises(ConfigError):
        Step("a", "x", timeout=0)
    app = App("shapes")
    app.workflow(Workflow("w", Plan, [Step("a", "x")]))
    with pytest.raises(ConfigError, match="declared twice"):
        app.workflow(Workflow("w", Plan, [Step("a", "x")]))

    async def sync_fn(o: Order) -> None: ...

    with pytest.raises(ConfigError, match="async function"):
        app.action("x")(lambda o: None)  # type: ignore[arg-type,return-value]
    app.action("x")(sync_fn)
    with pytest.raises(ConfigError, match="used twice"):
        app.action("x")(sync_fn)

    async def two(a: Order, b: Order) -> None: ...

    with pytest.raises(ConfigError, match="takes one argument"):
        app.action("y")(two)


Shape = tuple[str, tuple[str, ...], str]  # a step: its name, dependencies and action
ACTIONS = ("act", "act_too")


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Shape], list[str], list[str]]:
    """Steps s0..sn, each depending on some earlier ones; the steps that fail; the steps
    whose first attempt fails."""
    n = draw(st.integers(1, 7))
    steps = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        # Its action: steps scheduled together go out as one record per action.
        steps.append(
            (f"s{i}", tuple(f"s{d}" for d in sorted(deps)), draw(st.sampled_from(ACTIONS)))
        )
    names = [s for s, _, _ in steps]
    failing = draw(st.lists(st.sampled_from(names), unique=True, max_size=2))
    flaky = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    return steps, failing, [s for s in flaky if s not in failing]


def expected(steps: list[Shape], failing: list[str]) -> dict[str, str]:
    """A step completes when its dependencies did and it is not failing. Once any step has
    failed nothing new starts, so a step not reached is skipped; which of the reachable
    ones ran before the failure depends on timing, so those may be completed or skipped."""
    status: dict[str, str] = {}
    for name, deps, _ in steps:
        if any(status[d] != "completed" for d in deps):
            status[name] = "skipped"
        else:
            status[name] = "failed" if name in failing else "completed"
    return status


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags())
def test_random_dags_respect_every_dependency(
    nats_url: str, shape: tuple[list[Shape], list[str], list[str]]
) -> None:
    asyncio.run(_run_dag(nats_url, *shape))


async def _run_dag(url: str, steps: list[Shape], failing: list[str], flaky: list[str]) -> None:
    app = App("shapes")
    name = f"g{abs(hash((tuple(steps), tuple(failing), tuple(flaky))))}"
    shape = [Step(s, action, deps, input=order(s), retries=1) for s, deps, action in steps]
    app.workflow(Workflow(name, Plan, shape))
    tried: set[str] = set()

    async def act(o: Order) -> str:
        if o.fail:
            raise PermanentError(o.step)
        if o.flaky and o.step not in tried:
            tried.add(o.step)
            raise RuntimeError(f"{o.step} fails once")
        return o.step

    for action in ACTIONS:
        app.action(action)(act)

    async with run_app(app, url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start(name, Plan(fail=failing, flaky=flaky))
        run = await runs.wait(started.run_id, timeout=30)
        history = await EventStore(harness.bus).load("wf", started.run_id)
    done = {o.step: e.seq for e in history.events for o in outcomes(e.event)
            if isinstance(o, StepCompleted)}  # fmt: skip
    began = [  # a step runs once scheduled: by the run's start, an outcome, or a decision
        (s.step, e.seq) for e in history.events for s in scheduled_by(e.event)
    ]
    deps = {step: needs for step, needs, _ in steps}
    for step, seq in began:  # (at the latest by the outcome of its last dependency itself)
        assert all(d in done and done[d] <= seq for d in deps[step]), (step, history)
    assert len(done) == len(set(done))
    want = expected(steps, failing)
    got = {s: v.status for s, v in run.steps.items()}
    for step, view in run.steps.items():
        if view.status == "completed":
            assert view.attempts == (2 if step in flaky else 1), (step, view)
    ran_failing = [s for s in failing if got[s] == "failed"]
    assert run.status == ("failed" if ran_failing else "completed")
    for step, status in got.items():
        if want[step] == "completed" and ran_failing:
            assert status in ("completed", "skipped"), (step, got, want)
        elif want[step] == "failed" and status != "failed":
            assert ran_failing, (step, got, want)
            assert status == "skipped", (step, got, want)
        else:
            assert status == want[step], (step, got, want)
