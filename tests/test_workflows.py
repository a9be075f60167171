"""Workflows on a real server: DAG order, parallel steps, retries, failures, cancel."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from bus import (
    App,
    Backoff,
    Bus,
    ConfigError,
    EventStore,
    History,
    Projector,
    RunView,
    Step,
    Workflow,
    Workflows,
)
from bus._client import _current_bus
from bus._workflow_events import (
    DOMAIN,
    CancelRequested,
    RunCancelled,
    RunCompleted,
    StepCompensated,
    StepCompleted,
    StepsScheduled,
    load_run,
    outcomes,
    scheduled_by,
)
from bus.testing import run_app
from observability.metrics import Metrics
from tests.domain import eventually
from tests.workflow_apps import Job, diamond, make_app


async def followed_until(runs: Workflows, run_id: str, reached: Callable[[RunView], bool]) -> None:
    """Follow the run's view until `reached` holds of it."""
    async for run in runs.follow(run_id):
        if reached(run):
            return


async def run_to_its_end(app: App, nats_url: str) -> tuple[RunView, History]:
    """One run of `app`'s workflow `w`, as it ended, and its history."""
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        run_id = (await runs.start("w", Job())).run_id
        run = await runs.wait(run_id, timeout=20)
        return run, await EventStore(harness.bus).load(DOMAIN, run_id)


async def test_a_diamond_runs_in_order_and_b_c_overlap(nats_url: str) -> None:
    app, _calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", {"text": "x", "sleep": 0.3})
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "completed", run
        steps = run.steps
        assert all(s.status == "completed" and s.attempts == 1 for s in steps.values())
        b, c = steps["b"].output, steps["c"].output
        assert b["started"] < c["ended"]
        assert c["started"] < b["ended"]
        assert steps["d"].output["text"] == "x+x+x+x+x"
        assert run.output == {"d": steps["d"].output}
        view = await runs.get(started.run_id, after_seq=run.seq)
        assert view is not None
        assert view.status == "completed"


async def test_a_step_failing_twice_then_succeeding_shows_three_attempts(nats_url: str) -> None:
    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job(fail_times={"c": 2}))
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "completed", run
        assert run.steps["c"].attempts == 3
        assert calls["c"] == 3
        assert run.steps["c"].error is None
        assert [run.steps[s].attempts for s in "abd"] == [1, 1, 1]


async def test_a_step_that_always_fails_fails_the_run_skips_and_compensates(
    nats_url: str,
) -> None:
    app, calls = make_app(retries=2)
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job(fail_times={"c": -1}))
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "failed", run
        assert run.steps["c"].status == "failed"
        assert run.steps["c"].attempts == 3
        assert "c failed" in (run.steps["c"].error or "")
        assert "'c'" in (run.error or "")
        assert run.steps["d"].status == "skipped"
        assert "d" not in calls
        assert run.steps["b"].status == "completed"
        assert run.steps["b"].compensation == "done"
        assert calls["undo"] == 1


async def test_a_permanent_error_is_not_retried(nats_url: str) -> None:
    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job(permanent=["a"]))
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "failed"
        assert run.steps["a"].attempts == 1
        assert calls == {"a": 1}
        assert [run.steps[s].status for s in "bcd"] == ["skipped"] * 3
        assert "PermanentError: a cannot be done" in (run.steps["a"].error or "")


async def test_cancel_stops_a_run_in_flight(nats_url: str) -> None:
    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job(hold=["b"]))
        await followed_until(runs, started.run_id, lambda run: run.steps["b"].status == "running")
        answer = await runs.cancel(started.run_id, "changed my mind")
        assert answer is not None
        assert answer.status == "running"
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "cancelled"
        assert run.steps["b"].status == "cancelled"
        assert run.steps["d"].status == "cancelled"
        assert "d" not in calls
        again = await runs.cancel(started.run_id)
        assert again is not None
        assert again.status == "cancelled"
        assert await runs.cancel("diamond-nope") is None


async def test_cancel_compensates_the_completed_steps_first(nats_url: str) -> None:
    """b completed (and has `compensate=`), d is held: the cancel stops d, undoes b, and
    only then records the run cancelled."""

    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job(hold=["d"]))
        await followed_until(runs, started.run_id, lambda run: run.steps["d"].status == "running")
        await runs.cancel(started.run_id)
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "cancelled"
        assert run.steps["d"].status == "cancelled"
        assert run.steps["b"].status == "completed"
        assert run.steps["b"].compensation == "done"
        assert calls["undo"] == 1
        history = await EventStore(harness.bus).load("wf", started.run_id)
        kinds = [type(e.event) for e in history.events]
        assert (
            kinds.index(CancelRequested) < kinds.index(StepCompensated) < kinds.index(RunCancelled)
        )


async def test_the_same_idempotency_key_gives_the_same_run(nats_url: str) -> None:
    app, _ = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        first = await runs.start("diamond", Job(), idempotency_key="k-1")
        second = await runs.start("diamond", Job(text="other"), idempotency_key="k-1")
        assert second.run_id == first.run_id
        third = await runs.start("diamond", Job(), idempotency_key="k-2")
        assert third.run_id != first.run_id
        for started in (first, third):
            run = await runs.wait(started.run_id, timeout=20)
            assert run.status == "completed"
            await runs.get(started.run_id, after_seq=run.seq)  # the projection has it
        page, cursor = await runs.list("diamond", status="completed", limit=1)
        assert len(page) == 1
        assert cursor is not None
        rest, end = await runs.list("diamond", status="completed", cursor=cursor)
        assert len(rest) == 1
        assert end is None
        assert (await runs.list("diamond", status="failed"))[0] == []
        counts = await runs.counts()
        assert counts["diamond"]["runs"] == {"completed": 2}
        assert counts["diamond"]["steps"]["d"] == {"completed": 2}


@pytest.mark.parametrize(
    "bad",
    [{"text": 5}, {"fail_times": "x"}, [], "x", None, {"sleep": "long"}],
)
async def test_bad_input_is_refused_and_starts_nothing(nats_url: str, bad: object) -> None:

    app, _calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        with pytest.raises(ConfigError, match="input of workflow"):
            await runs.start("diamond", bad)
        with pytest.raises(ConfigError, match="no workflow"):
            await runs.start("nope", {})
        assert (await harness.bus.streams.info("WF")).last_seq == 0


async def test_two_instances_at_once_record_each_decision_once(nats_url: str) -> None:
    """Two instances of the app (each with its own knowledge of the runs, as two processes)
    share the steps' work, and each decides after its own outcomes: parallel steps finish on
    either, and the fence lets each decision land once."""

    app, _ = make_app()
    twin, _ = make_app()
    async with (
        run_app(app, nats_url) as harness,
        Bus(nats_url, registry=twin.registry, streams=twin.streams, router=twin.router),
    ):
        runs = Workflows(harness.bus, app)
        started = [await runs.start("diamond", Job(fail_times={"b": 1})) for _ in range(5)]
        retried = 0  # b fails once in each instance: one or two runs retry it
        for one in started:
            assert (await runs.wait(one.run_id, timeout=30)).status == "completed"
            history = await EventStore(harness.bus).load("wf", one.run_id)
            events = [e.event for e in history.events]
            scheduled = Counter((s.step, s.attempt) for e in events for s in scheduled_by(e))
            assert set(scheduled.values()) == {1}, scheduled
            retried += ("b", 2) in scheduled
            done = Counter(
                o.step for e in events for o in outcomes(e) if isinstance(o, StepCompleted)
            )
            assert done == {"a": 1, "b": 1, "c": 1, "d": 1}
            assert sum(isinstance(e, RunCompleted) for e in events) == 1
        assert 1 <= retried <= 2


async def test_runs_and_steps_are_counted_by_the_observer(nats_url: str) -> None:

    app, _ = make_app()
    metrics = Metrics()
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams, router=app.router,
            observer=metrics) as bus,
        Projector(bus, app.projections.values()),
    ):  # fmt: skip
        runs = Workflows(bus, app)
        started = await runs.start("diamond", Job(fail_times={"b": 1}))
        assert (await runs.wait(started.run_id, timeout=20)).status == "completed"
        value = metrics.registry.get_sample_value
        done = {"workflow": "diamond", "outcome": "completed"}
        await eventually(lambda: value("bus_workflow_runs_total", done))  # told after the append
    assert value("bus_workflow_runs_total", {"workflow": "diamond", "outcome": "completed"}) == 1
    steps = {"workflow": "diamond", "step": "b"}
    assert value("bus_workflow_steps_total", {**steps, "outcome": "retried"}) == 1
    assert value("bus_workflow_steps_total", {**steps, "outcome": "completed"}) == 1
    assert value("bus_workflow_step_duration_seconds_count", steps) == 2
    assert value("bus_workflow_run_duration_seconds_count",
                 {"workflow": "diamond", "outcome": "completed"}) == 1  # fmt: skip


async def test_a_step_over_its_timeout_fails_that_attempt(nats_url: str) -> None:

    app = App("timeouts")
    app.workflow(Workflow("slow", Job, [Step("a", "hang", timeout=0.2, retries=1)]))
    cancelled: list[str] = []

    @app.action("hang")
    async def hang(job: Job) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(job.text)
            raise

    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        run = await runs.wait((await runs.start("slow", Job())).run_id, timeout=20)
    assert run.status == "failed"
    assert run.steps["a"].attempts == 2
    assert run.steps["a"].error == "timed out after 0.2s"
    assert cancelled == ["x", "x"]  # each attempt's handler was stopped


async def test_an_input_function_that_raises_fails_its_step(nats_url: str) -> None:

    def broken(ctx: object) -> None:
        raise KeyError("no such field")

    app = App("inputs")
    app.workflow(Workflow("w", Job, [Step("a", "act"), Step("b", "act", ("a",), broken)]))

    @app.action("act")
    async def act(job: Job) -> str:
        return job.text

    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        run = await runs.wait((await runs.start("w", Job())).run_id, timeout=20)
    assert run.status == "failed"
    assert run.steps["a"].status == "completed"
    assert run.steps["b"].status == "failed"
    assert run.steps["b"].error == "input: KeyError: 'no such field'"


async def test_a_first_step_whose_input_function_raises_fails_the_run_at_its_start(
    nats_url: str,
) -> None:
    """The first steps' inputs are made as the run starts: one that cannot be fails its step,
    the rest is skipped and the run fails, recorded by the starter, nothing run."""

    def broken(ctx: object) -> None:
        raise KeyError("no such field")

    ran: list[str] = []
    app = App("rootinputs")
    app.workflow(
        Workflow("w", Job, [Step("a", "act", input=broken), Step("c", "other"),
                            Step("b", "act", ("a", "c"))])
    )  # fmt: skip

    @app.action("act")
    async def act(job: Job) -> str:
        ran.append("act")
        return job.text

    @app.action("other")
    async def other(job: Job) -> str:
        ran.append("other")
        return job.text

    run, history = await run_to_its_end(app, nats_url)
    assert run.status == "failed"
    assert run.steps["a"].status == "failed"
    assert run.steps["a"].error == "input: KeyError: 'no such field'"
    assert (run.steps["b"].status, run.steps["c"].status) == ("skipped", "skipped")
    assert ran == []
    names = [type(e.event).__name__ for e in history.events]
    assert names == ["RunStarted", "StepFailed", "StepsSkipped", "RunFailed"]
    assert all(getattr(e.event, "origin", None) in (None, history.events[0].seq)
               for e in history.events[1:])  # fmt: skip


async def test_first_steps_of_several_actions_are_tasks_of_their_own_at_the_run_origin(
    nats_url: str,
) -> None:
    """The start carries one action's first steps; another action's get a record of their
    own, which knows where the run begins (a worker that must read the run reads from
    there)."""

    app = App("roots")
    app.workflow(Workflow("w", Job, [Step("a", "first"), Step("c", "second"),
                                     Step("b", "first", ("a", "c"))]))  # fmt: skip

    @app.action("first")
    async def first(job: Job) -> str:
        return "1"

    @app.action("second")
    async def second(job: Job) -> str:
        return "2"

    run, history = await run_to_its_end(app, nats_url)
    assert run.status == "completed"
    assert run.output == {"b": "1"}
    start, second_task = history.events[0], history.events[1]
    assert [s.step for s in start.event.scheduled] == ["a"]  # type: ignore[attr-defined]
    assert isinstance(second_task.event, StepsScheduled)
    assert [s.step for s in second_task.event.steps] == ["c"]
    assert second_task.event.origin == start.seq


async def test_a_run_is_read_from_its_first_event_or_else_whole(nats_url: str) -> None:
    """Loads start at the run's first sequence (its `origin`); a wrong one reads it all."""

    app, _ = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        first = await runs.start("diamond", Job())
        second = await runs.start("diamond", Job())
        done = await runs.wait(second.run_id, timeout=20)
        store = EventStore(harness.bus)
        for origin in (0, second.seq, second.seq + 1, first.seq, 10**6):
            history, run = await load_run(store, second.run_id, origin)
            assert run == done, origin
            assert history.version == done.seq
        assert done.origin == second.seq


async def test_a_task_run_twice_records_its_outcome_once(nats_url: str) -> None:
    """No claim before a handler runs: a task delivered again (a redelivery after a crash)
    runs the handler again, but its outcome is recorded once, and nothing is decided twice."""

    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", Job())
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "completed", run
        store = EventStore(harness.bus)
        before = await store.load("wf", started.run_id)
        task = next(e for e in before.events if any(s.step == "b" for s in scheduled_by(e.event)))
        worker = next(s for s in app.router.specs if s.durable == "wf-work")
        token = _current_bus.set(harness.bus)  # as the consumer delivering it again would
        try:
            await worker.fn(task.event, task)
        finally:
            _current_bus.reset(token)
        assert calls["b"] == 2
        after = await store.load("wf", started.run_id)
        assert after.version == before.version  # nothing recorded: the outcome was there


async def test_a_retry_waiting_for_its_backoff_does_not_run_once_cancelled(
    nats_url: str,
) -> None:
    """A step is running once scheduled (no claim): a retry whose backoff outlasts the
    cancel is dropped by the worker that saw the cancel, its handler not run again."""

    app = App("wfbackoff")
    app.workflow(
        Workflow("slow_retry", Job, [
            Step("a", "fails", input=lambda ctx: ctx.input, retries=3,
                 backoff=Backoff(base=3.0, factor=1.0, jitter=0.0)),  # outlasts the cancel
        ])
    )  # fmt: skip
    calls: list[str] = []

    @app.action("fails")
    async def fails(job: Job) -> None:
        calls.append(job.text)
        raise RuntimeError("fails until cancelled")

    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("slow_retry", Job())
        # the retry scheduled, waiting for its backoff
        await followed_until(runs, started.run_id, lambda run: run.steps["a"].attempts == 2)
        await runs.cancel(started.run_id)
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "cancelled"
        await harness.settle()  # the retry's task handled (dropped) once its backoff is over
        assert calls == ["x"]


async def test_a_worker_without_the_workflow_leaves_decisions_to_the_orchestrator(
    nats_url: str,
) -> None:
    """Actions hosted by an app that does not declare the workflow: each outcome goes to the
    orchestrator of the app that does, which schedules what follows, retries included (whose
    record carries no input: the worker finds the first attempt's in the history)."""

    orchestrating = App("wfdecides")
    orchestrating.workflow(diamond())
    working, calls = make_app("wfworks", declare=False)
    async with (
        run_app(orchestrating, nats_url) as harness,
        Bus(nats_url, registry=working.registry, streams=working.streams, router=working.router),
    ):
        runs = Workflows(harness.bus, orchestrating)
        started = await runs.start("diamond", Job(text="t", fail_times={"b": 1}))
        run = await runs.wait(started.run_id, timeout=30)
        history = await EventStore(harness.bus).load("wf", started.run_id)
    assert run.status == "completed", run
    assert run.steps["b"].attempts == 2
    assert calls == {"a": 1, "b": 2, "c": 1, "d": 1}
    # The retried b had the input its first attempt had: as c, from a's output.
    assert run.steps["b"].output["text"] == run.steps["c"].output["text"]
    outcomes = [
        e.subject.rsplit(".", 1)[1]
        for e in history.events
        if e.event.__event_name__.startswith("step_")
    ]
    assert set(outcomes) == {"decide"}  # each left to the orchestrator
