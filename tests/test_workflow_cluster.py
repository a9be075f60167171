"""Workflows on a 3-node cluster with their history replicated (`WF` declared R3): runs
started through one node and worked by processes on the two others complete, each step
recorded once and in dependency order, and every node's replica holds the same histories.

Each process keeps the runs it decides folded and appends conditional on a run's last
sequence; on R3 the sequence is the leader's, and a worker that must read a run reads it
from the leader (bus._reader), so a follower that has not yet applied a record can neither
make a worker decide on an older state nor let two records land on the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest

from bus import App, Bus, EmbeddedCluster, EventStore, Step, StreamSpec, Workflow, Workflows
from bus._reader import read_last
from bus._workflow_events import DOMAIN, StepCompleted, outcomes

RUNS = 40
FAILED_ONCE: set[str] = set()  # (shared by the three processes here: one failure per run)


class Doc(msgspec.Struct):
    text: str = "x"


def _doc(ctx: object) -> Doc:
    return ctx.input  # type: ignore[attr-defined, no-any-return]


def cluster_app() -> App:
    """A diamond of two actions, its history on an R3 stream."""
    app = App("wfcluster", streams=[StreamSpec.for_domain(DOMAIN, replicas=3)])
    app.workflow(
        Workflow("diamond", Doc, [
            Step("split", "cl_split", input=_doc),
            Step("left", "cl_side", ("split",), _doc, retries=2),
            Step("right", "cl_side", ("split",), _doc, retries=2),
            Step("join", "cl_split", ("left", "right"), _doc),
        ])
    )  # fmt: skip

    @app.action("cl_split", concurrency=16)
    async def split(doc: Doc) -> str:
        return doc.text.upper()

    @app.action("cl_side", concurrency=16)
    async def side(doc: Doc) -> str:
        if doc.text not in FAILED_ONCE:  # a run's first side attempt fails: one retry each
            FAILED_ONCE.add(doc.text)
            raise RuntimeError("once")
        return doc.text

    return app


@contextlib.asynccontextmanager
async def processes(cluster: EmbeddedCluster) -> AsyncIterator[list[Bus]]:
    """One Bus per node, each hosting the app's actions and orchestrator (three processes'
    worth of consumers sharing the work), each with its own App (what a process knows)."""
    async with contextlib.AsyncExitStack() as stack:
        buses = []
        for url in cluster.urls:
            app = cluster_app()
            options = {"registry": app.registry, "streams": app.streams, "router": app.router}
            buses.append(
                await stack.enter_async_context(Bus(url, replicas=3, drain_timeout=2.0, **options))
            )
        yield buses


@pytest.mark.slow
async def test_runs_on_a_replicated_history_complete_once_through_any_node(
    nats_cluster: EmbeddedCluster,
) -> None:
    starter_app = cluster_app()
    async with processes(nats_cluster) as buses:
        starter = Workflows(buses[0], starter_app)
        started = await asyncio.gather(
            *(starter.start("diamond", Doc(text=f"d{i}")) for i in range(RUNS))
        )
        runs = await asyncio.gather(*(starter.wait(s.run_id, timeout=60) for s in started))
        assert [r.status for r in runs] == ["completed"] * RUNS
        assert all(sorted([r.steps["left"].attempts, r.steps["right"].attempts]) == [1, 2]
                   for r in runs)  # fmt: skip
        for s in started:
            history = await EventStore(buses[1]).load(DOMAIN, s.run_id)  # (the leader's)
            completed = [o.step for e in history.events for o in outcomes(e.event)
                         if isinstance(o, StepCompleted)]  # fmt: skip
            assert Counter(completed) == {"split": 1, "left": 1, "right": 1, "join": 1}
            assert (completed[0], completed[-1]) == ("split", "join")
            # Every replica holds the run's records as the leader does, once it has caught up
            # with the run's last one (the last record under each name, as a replica answers).
            last = {e.subject: e.seq for e in history.events}
            for bus in buses:
                found = await read_last(bus.nc, "WF", [f"{DOMAIN}.{s.run_id}.*"], 100,
                                        at_least=history.version)  # fmt: skip
                assert {m.subject: m.seq for m in found} == last
