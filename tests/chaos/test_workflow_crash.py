"""Workflows across processes: kill -9 of the worker and then of the orchestrator mid-run,
restart both: the run completes and no step is recorded completed twice. And one trace for
the whole run, across processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from bus import Bus, EmbeddedServer, EventStore, Workflows
from bus._workflow_events import RunCompleted, StepCompleted, outcomes
from tests.chaos import workflow_app
from tests.domain import eventually
from tests.otlp import Receiver
from tests.processes import BUS, running

ACTIONS = "tests.chaos.workflow_app:actions"
ORCHESTRATOR = "tests.chaos.workflow_app:orchestrator"


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "BUS_NATS_URL": url, "BUS_METRICS_PORT": "0", **extra}


@pytest.mark.parametrize(
    "actions", [ACTIONS, "tests.chaos.workflow_app:app"], ids=["worker", "deciding-worker"]
)
async def test_kill_9_worker_then_orchestrator_mid_run(
    nats_server: EmbeddedServer, tmp_path: Path, actions: str
) -> None:
    """The worker hosts the action alone, or the workflow too (then it orchestrates as well:
    two orchestrators are killed)."""
    env = env_for(nats_server.url)
    app = workflow_app.orchestrator
    async with Bus(nats_server.url, registry=app.registry, streams=app.streams) as bus:
        runs = Workflows(bus, app)
        with (
            running([BUS, "worker", "--app", actions], tmp_path / "w1.log", env) as worker,
            running([BUS, "worker", "--app", ORCHESTRATOR], tmp_path / "o1.log", env) as orch,
        ):
            started = await runs.start("chain", {"seconds": {"b": 30.0}})
            async with asyncio.timeout(60):
                async for run in runs.follow(started.run_id):
                    if run.steps["b"].status == "running":
                        break
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            orch.send_signal(signal.SIGKILL)
            orch.wait()
        # b's task comes back to the new worker once its ack wait is over; it sleeps less.
        with (
            running(
                [BUS, "worker", "--app", actions], tmp_path / "w2.log", {**env, "WF_SLOW": "0"}
            ),
            running([BUS, "worker", "--app", ORCHESTRATOR], tmp_path / "o2.log", env),
        ):
            run = await runs.wait(started.run_id, timeout=90)
        history = await EventStore(bus).load("wf", started.run_id)
    assert run.status == "completed", run
    completed = [o.step for e in history.events for o in outcomes(e.event)
                 if isinstance(o, StepCompleted)]  # fmt: skip
    assert sorted(completed) == ["a", "b", "c"]
    assert run.steps["b"].attempts == 1  # the crashed attempt's task ran again, as attempt 1
    assert sum(isinstance(e.event, RunCompleted) for e in history.events) == 1


async def test_one_trace_spans_every_handler_of_a_run(
    nats_server: EmbeddedServer, receiver: Receiver, tmp_path: Path
) -> None:
    """The run is started inside a span here; the worker (in another process, deciding
    after each step) exports to the test receiver: every handler span is in that trace."""
    env = env_for(
        nats_server.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50"
    )
    app = workflow_app.app
    provider = TracerProvider()
    async with Bus(
        nats_server.url, registry=app.registry, streams=app.streams, tracer_provider=provider
    ) as bus:
        runs = Workflows(bus, app)
        with running(
            [BUS, "worker", "--app", "tests.chaos.workflow_app:app"], tmp_path / "w.log", env
        ):
            with provider.get_tracer("test").start_as_current_span("start a run") as span:
                started = await runs.start("chain", {})
            trace_id = span.get_span_context().trace_id
            assert (await runs.wait(started.run_id, timeout=30)).status == "completed"

            def spans(name: str) -> list[bytes]:
                return [s.trace_id for _, s in receiver.received() if s.name == f"process {name}"]

            await eventually(lambda: len(spans("wf-sleep")) == 3)  # the action, thrice
    assert set(spans("wf-sleep")) == {trace_id.to_bytes(16, "big")}
