"""LiveView: projection queries from memory that never answer older than the bucket."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from bus import Bus, BusTimeout, Envelope, Event, LiveView, Projection, ProjectionView, Projector
from bus._projection import Record
from services.demo import TaskCompleted, TaskCreated, TaskProgressed, TaskView, app

task = app.projections["task"]


class Count(msgspec.Struct):
    count: int = 0


def add(state: Count, envelope: Envelope[Event]) -> Count:
    return Count(state.count + 1)


async def test_read_your_writes_from_memory_over_many_writes(tasks: Bus) -> None:
    async with LiveView(tasks, task) as live:
        for i in range(60):
            key = f"k{i % 3}"  # the same hot keys, written again and again
            published = await tasks.publish(TaskProgressed(attempt=i), key)
            await live.wait_for(published.seq, timeout=5)
            found = await live.get(key)
            assert found is not None
            assert found[1] >= published.seq  # never older than the write we waited for
        assert live.cached == 3
        for key in ("k0", "k1", "k2"):  # and equal to what the bucket holds
            assert await live.get(key) == await ProjectionView(tasks, task).get(key)


async def test_missing_keys_and_a_bounded_cache(tasks: Bus) -> None:
    async with LiveView(tasks, task, max_keys=4) as live:
        assert await live.get("nobody") is None
        results = await tasks.publish_many(
            [(TaskCreated(title=f"t{i}"), f"m{i}") for i in range(10)]
        )
        await live.wait_for(results[-1].seq)
        for i in range(10):
            found = await live.get(f"m{i}")
            assert found is not None
            assert found[0].title == f"t{i}"
        assert live.cached == 4


async def test_wait_for_times_out_with_a_clear_error(tasks: Bus) -> None:
    async with LiveView(tasks, task) as live:
        status = await live.status()
        with pytest.raises(BusTimeout, match="did not reach"):
            await live.wait_for(status.position + 1000, timeout=0.3)


async def test_follows_a_rebuild_to_the_new_generation(nats_url: str) -> None:
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        Projector(bus, [task]) as projector,
        LiveView(bus, task) as live,
    ):
        await bus.publish(TaskCreated(title="before"), "r1")
        done = await bus.publish(TaskCompleted(attempts=1), "r1")
        await live.wait_for(done.seq)
        before = await live.get("r1")
        assert before is not None
        assert before[0].status == "completed"
        switched = await projector.rebuild("task")
        assert switched.generation == 2
        for _ in range(50):  # the switch's checkpoint reaches the view
            if (await live.status()).generation == 2:
                break
            await asyncio.sleep(0.05)
        assert await live.get("r1") == before
        after = await bus.publish(TaskProgressed(attempt=5), "r1")
        await live.wait_for(after.seq)
        found = await live.get("r1")
        assert found is not None
        assert found[1] == after.seq


async def test_applied_answers_waiters_and_reads_without_the_checkpoint(nats_url: str) -> None:
    """What a projector in the same process reports as stored is served at once; a report
    for another generation is not (the view follows a switch from its checkpoint)."""
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        LiveView(bus, task) as live,  # no projector runs: only `applied` moves it
    ):
        generation = (await live.status()).generation
        state = TaskView(status="created", title="told", version=5)
        live.applied(generation, 5, {"a1": Record(5, msgspec.msgpack.encode(state))})
        assert (await live.wait_for(5, timeout=1)).position == 5
        assert await live.get("a1") == (state, 5)
        live.applied(generation + 1, 9, {"a2": Record(9, msgspec.msgpack.encode(state))})
        with pytest.raises(BusTimeout):
            await live.wait_for(9, timeout=0.3)


async def test_an_observed_projector_tells_the_view_what_it_stored(nats_url: str) -> None:
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        Projector(bus, [task]) as projector,
        LiveView(bus, task) as live,
    ):
        told: list[tuple[int, int, dict[str, Record]]] = []
        projector.observe("task", live.applied)
        projector.observe("task", lambda *batch: told.append(batch))
        for i in range(5):
            done = await bus.publish(TaskCreated(title=f"o{i}"), f"o{i}")
            await live.wait_for(done.seq)
            found = await live.get(f"o{i}")
            assert found is not None
            assert (found[0].title, found[1]) == (f"o{i}", done.seq)
        assert told
        assert told[-1][1] == done.seq
        stored = ProjectionView(bus, task)
        for generation, _, records in told:  # each report names records the bucket holds
            assert generation == 1
            for key, record in records.items():
                held = await stored.get(key)
                assert held is not None
                assert held[1] >= record.seq


async def test_an_expected_write_never_hides_an_unapplied_event(nats_url: str) -> None:
    """`expect` starts the "has it seen it?" read for a projection reading one event type:
    while an event it reads is unapplied, a later write of another type is not seen; once
    applied, it is, and the check the write started answers for it."""
    created = Projection(
        f"created_{uuid.uuid4().hex[:8]}", ("tasks.*.created",), Count, lambda e: "all", add
    )
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        LiveView(bus, created) as live,  # no projector yet
    ):
        ours = await bus.publish(TaskCreated(title="x"), "ex1")
        other = await bus.publish(TaskProgressed(attempt=1), "ex1")
        with pytest.raises(BusTimeout):  # (it learns the projection's coverage here)
            await live.wait_for(ours.seq, timeout=0.3)
        live.expect(other.stream, other.seq)
        with pytest.raises(BusTimeout):
            await live.wait_for(other.seq, timeout=0.3)
        async with Projector(bus, [created]):
            await live.wait_for(other.seq, timeout=10)
            later = await bus.publish(TaskProgressed(attempt=2), "ex1")
            live.expect(later.stream, later.seq)
            assert (await live.wait_for(later.seq, timeout=10)).position >= later.seq
            found = await live.get("all")
            assert found is not None
            assert found[0].count >= 1
