"""The orchestrator's kept runs (bus._workflow_known) are the real history's fold: read from a
kept prefix, or followed through a worker's outcome without a read, on a real server."""

from __future__ import annotations

from typing import Any

import msgspec

from bus import App, EventStore, Step, Workflow, Workflows
from bus._workflow_events import RunView, StepCompleted, StepFailed, fold
from bus._workflow_known import Known
from bus.testing import run_app


class Source(msgspec.Struct):
    code: str = "x"


def _source(ctx: Any) -> Source:
    return ctx.input


def _decisive(run: RunView) -> Any:
    """What decisions depend on (timestamps left out: a followed outcome has its own)."""
    out = msgspec.to_builtins(run)
    for step in out["steps"].values():
        del step["started_at"], step["ended_at"]
    del out["ended_at"]
    return out


async def test_kept_runs_fold_like_the_history(nats_url: str) -> None:
    app = App("known")
    app.workflow(
        Workflow("chain", Source, [
            Step("a", "k_ok", input=_source),
            Step("b", "k_flaky", ("a",), _source, retries=2),
            Step("c", "k_ok", ("a",), _source),
            Step("d", "k_ok", ("b", "c"), _source),
        ])
    )  # fmt: skip
    failed_once: set[str] = set()

    @app.action("k_ok")
    async def ok(source: Source) -> str:
        return source.code

    @app.action("k_flaky")
    async def flaky(source: Source) -> str:
        if not failed_once:
            failed_once.add("b")
            raise RuntimeError("first attempt fails")
        return source.code

    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("chain", Source())
        run = await runs.wait(started.run_id, timeout=30)
        assert run.status == "completed"
        store = EventStore(harness.bus)
        events = (await store.load("wf", started.run_id)).events
        assert any(isinstance(e.event, StepFailed) for e in events)

        outcomes = 0
        for i, outcome in enumerate(events):
            if not isinstance(outcome.event, StepCompleted | StepFailed):
                continue
            assert outcome.event.after  # the version it was appended at: its predecessor's
            prefix = [e for e in events if (e.seq or 0) <= outcome.event.after]
            assert events[len(prefix)] is outcome
            known = Known()
            known.remember(fold(prefix), {})
            assert known.follow(started.run_id, outcome)
            outcomes += 1
            kept = known.get(started.run_id)
            assert kept is not None
            assert _decisive(kept[0]) == _decisive(fold(events[: i + 1]))
            stale = Known()
            stale.remember(fold(prefix[:-1]), {})
            assert not stale.follow(started.run_id, outcome)
            # read from any kept prefix: the tail folds to the whole history
            tail_read, _ = await stale.read(store, started.run_id, prefix[0].seq or 0)
            assert _decisive(tail_read) == _decisive(fold(events))
        assert outcomes == 5  # a, b twice (it failed once), c, d: each followed


def test_the_tasks_sent_are_kept_with_the_run_and_go_with_it() -> None:
    """A kept run's sent task ids persist across triggers; a run not kept (or finished, or
    pushed out) has none, so its tasks are sent again (JetStream stores them once)."""
    known = Known(size=1)
    assert known.sent("r1") == set()  # not kept: nothing known to be sent
    known.remember(RunView(run_id="r1", seq=1), {})
    known.sent("r1").add("r1.a.1")
    assert known.sent("r1") == {"r1.a.1"}
    known.remember(RunView(run_id="r1", seq=2), {})  # the run moved on: still sent
    assert known.sent("r1") == {"r1.a.1"}
    known.remember(RunView(run_id="r2", seq=3), {})  # r1 pushed out (size 1)
    assert known.sent("r1") == set()
    known.sent("r2").add("r2.a.1")
    known.remember(RunView(run_id="r2", seq=4, status="completed"), {})
    assert known.sent("r2") == set()
