"""LiveView: projection queries from memory that never answer older than the bucket."""

from __future__ import annotations

import asyncio

import pytest

from bus import Bus, BusTimeout
from bus.live_view import LiveView
from bus.projection import ProjectionView
from bus.projector import Projector
from services.demo import TaskCompleted, TaskCreated, TaskProgressed, app

task = app.projections["task"]


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
