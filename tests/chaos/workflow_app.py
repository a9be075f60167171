"""Apps for the workflow process tests: a chain `a -> b -> c` of one action that sleeps as
long as its step is told. `actions` hosts only the action, `orchestrator` only the workflow,
`app` both (`--app tests.chaos.workflow_app:actions`, and so on)."""

from __future__ import annotations

import asyncio
import os

import msgspec

from bus import App, RunContext, Step, Workflow

ACK_WAIT = 2.0  # a task held by a worker that died is sent again after this


class Chain(msgspec.Struct):
    seconds: dict[str, float] = {}


class Work(msgspec.Struct):
    step: str
    seconds: float


def work(step: str):
    return lambda ctx: Work(step, ctx.input.seconds.get(step, 0.0))


def chain(ctx: RunContext[Chain]) -> None:
    """The run's output: nothing beyond the steps' own."""


CHAIN = Workflow(
    "chain",
    Chain,
    [
        Step("a", "sleep", input=work("a")),
        Step("b", "sleep", ("a",), work("b")),
        Step("c", "sleep", ("b",), work("c")),
    ],
    output=chain,
)


async def sleep(job: Work) -> str:
    """Sleeps as told, times WF_SLOW (so a restarted worker can finish a step quickly)."""
    await asyncio.sleep(job.seconds * float(os.environ.get("WF_SLOW", "1")))
    return job.step


actions = App("wfactions")
actions.action("sleep", ack_wait=ACK_WAIT)(sleep)

orchestrator = App("wforchestrator")
orchestrator.workflow(CHAIN)

app = App("wfchain")
app.workflow(CHAIN)
app.action("sleep", ack_wait=ACK_WAIT)(sleep)
