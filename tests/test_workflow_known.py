"""A process's kept runs (bus._workflow_known) are the real history's fold: read on from any
kept prefix, they fold to the whole history, on a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from bus import App, EventStore, Step, Workflow, Workflows
from bus._workflow_events import RunView, StepFailed, fold
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

        for i in range(1, len(events)):  # every prefix short of the run's end
            prefix = events[:i]
            known = Known()
            known.remember(fold(prefix))
            last = prefix[-1].seq or 0
            assert known.since(started.run_id, last) is not None
            assert known.since(started.run_id, last + 1) is None  # it would be stale there
            tail_read = await known.read(store, started.run_id, events[0].seq or 0)
            assert _decisive(tail_read) == _decisive(fold(events))
        assert app.known_runs.since(started.run_id, 0) is None  # finished: dropped


def test_kept_runs_are_bounded_and_only_move_forward() -> None:
    known = Known(size=1)
    known.remember(RunView(run_id="r1", seq=5))
    known.remember(RunView(run_id="r1", seq=3))  # an older state does not replace it
    kept = known.since("r1", 0)
    assert kept is not None
    assert kept.seq == 5
    known.remember(RunView(run_id="r2", seq=6))  # r1 pushed out (size 1)
    assert known.since("r1", 0) is None
    known.remember(RunView(run_id="r2", seq=7, status="completed"))  # finished: dropped
    assert known.since("r2", 0) is None


async def test_turns_are_taken_in_order_and_survive_cancelled_waiters() -> None:
    """A process's deciders take turns on a run: one at a time, in the order they came; a
    waiter cancelled before its turn, or just as it was handed the turn, passes it on; the
    turn is dropped once nobody holds or waits for it."""
    known = Known()
    order: list[str] = []
    gates = {name: asyncio.Event() for name in "abcde"}

    async def decider(name: str) -> None:
        async with known.deciding("run-1"):
            order.append(f"{name} in")
            await gates[name].wait()
            order.append(f"{name} out")

    tasks = {name: asyncio.create_task(decider(name)) for name in "abcde"}
    await asyncio.sleep(0)  # all in line: a holds the turn
    assert order == ["a in"]
    tasks["b"].cancel()  # cancelled while waiting
    await asyncio.sleep(0)
    gates["a"].set()
    await asyncio.sleep(0)  # a hands the turn to c (b is gone)
    tasks["c"].cancel()  # handed the turn, cancelled before it ran: d's turn
    for name in "de":
        gates[name].set()
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert order == ["a in", "a out", "d in", "d out", "e in", "e out"]
    assert [isinstance(r, asyncio.CancelledError) for r in results] == [
        False, True, True, False, False
    ]  # fmt: skip
    assert not known._turns  # nobody holds or waits: dropped
