"""Small apps the workflow tests run: a diamond DAG whose actions do what the input asks."""

from __future__ import annotations

import asyncio
import time

import msgspec

from bus import App, PermanentError, RunContext, Step, Workflow


class Job(msgspec.Struct):
    text: str = "x"
    fail_times: dict[str, int] = {}  # step -> failures before it succeeds (-1: always)
    permanent: list[str] = []  # steps that fail permanently
    sleep: float = 0.0  # seconds each of b and c takes
    hold: list[str] = []  # steps that wait until cancelled


class Part(msgspec.Struct):
    step: str
    text: str
    sleep: float = 0.0
    fail: int = 0
    permanent: bool = False
    hold: bool = False


class Done(msgspec.Struct):
    text: str
    started: float
    ended: float


def part(step: str, depends: tuple[str, ...] = ()):
    def make(ctx: RunContext[Job]) -> Part:
        text = "+".join([ctx.input.text, *(ctx.output(d, Done).text for d in depends)])
        job = ctx.input
        return Part(
            step,
            text,
            job.sleep if step in "bc" else 0.0,
            job.fail_times.get(step, 0),
            step in job.permanent,
            step in job.hold,
        )

    return make


def diamond(retries: int = 3) -> Workflow[Job]:
    """a -> (b, c) -> d, all on the action `work`; b compensated by `undo`."""
    return Workflow("diamond", Job, [
        Step("a", action="work", input=part("a"), retries=retries),
        Step("b", action="work", depends_on=("a",), input=part("b", ("a",)),
             retries=retries, compensate="undo"),
        Step("c", action="work", depends_on=("a",), input=part("c", ("a",)),
             retries=retries),
        Step("d", action="work", depends_on=("b", "c"), input=part("d", ("b", "c")),
             retries=retries),
    ])  # fmt: skip


def make_app(
    name: str = "wftest", retries: int = 3, declare: bool = True
) -> tuple[App, dict[str, int]]:
    """The app (its actions, and the workflow unless not to `declare` it: then another app
    decides its runs), and calls per step (this process's)."""
    app = App(name)
    calls: dict[str, int] = {}
    if declare:
        app.workflow(diamond(retries))

    @app.action("work")
    async def work(p: Part) -> Done:
        calls[p.step] = calls.get(p.step, 0) + 1
        started = time.time()
        if p.hold:
            await asyncio.Event().wait()
        if p.permanent:
            raise PermanentError(f"{p.step} cannot be done")
        if p.fail < 0 or calls[p.step] <= p.fail:
            raise RuntimeError(f"{p.step} failed (call {calls[p.step]})")
        await asyncio.sleep(p.sleep)
        return Done(p.text, started, time.time())

    @app.action("undo")
    async def undo(done: Done) -> None:
        calls["undo"] = calls.get("undo", 0) + 1

    return app, calls
