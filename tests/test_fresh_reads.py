"""Reads that promise freshness on a 3-node cluster with R3 streams and buckets: a direct get
is answered by whichever replica the connection's node has, and a follower may not have
applied what the leader has just acknowledged. Every read here goes through a connection to
another node than the write's, right after the write was acknowledged.

Each test measures, beside the library's reads, what a plain direct get through the same
node returned, to show the hazard is there on this machine (it is printed, not asserted: it
depends on timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, EmbeddedCluster, EventStore, LiveView, ProjectionView, Projector
from bus._lease import BUCKET as LEASES
from bus._reader import read_last
from tests.processes import BUS, running
from tests.shapes import full_fold, shop, stored, stream_of

ROUNDS = 1000


@contextlib.asynccontextmanager
async def one_bus_per_node(cluster: EmbeddedCluster, app: object) -> AsyncIterator[list[Bus]]:
    registry = app.registry  # type: ignore[attr-defined]
    async with contextlib.AsyncExitStack() as stack:
        buses = [
            await stack.enter_async_context(
                Bus(url, registry=registry, streams=app.streams, replicas=3)  # type: ignore[attr-defined]
            )
            for url in cluster.urls
        ]
        yield buses


@pytest.mark.slow
async def test_an_aggregate_loaded_through_any_node_is_never_older_than_its_last_append(
    nats_cluster: EmbeddedCluster,
) -> None:
    app = shop("fresh", replicas=3)
    stale_direct = 0
    async with one_bus_per_node(nats_cluster, app.app) as buses:
        for i in range(ROUNDS):
            writer, reader = buses[i % 3], buses[(i + 1) % 3]
            appended = await EventStore(writer).append(
                app.orders, f"o{i % 7}", [app.placed(total=i)]
            )
            subject = f"{app.orders}.o{i % 7}.*"
            plain = await read_last(reader.nc, app.orders.upper(), [subject], 10)
            stale_direct += max((m.seq for m in plain), default=0) < appended.version
            history = await EventStore(reader).load(app.orders, f"o{i % 7}")
            assert history.version == appended.version, f"round {i}: stale load"
            assert history.events[-1].event == app.placed(total=i)
    print(f"plain direct gets through another node: {stale_direct} of {ROUNDS} stale")


@pytest.mark.slow
async def test_read_your_writes_through_any_node(nats_cluster: EmbeddedCluster) -> None:
    """Published through one node, read with `after_seq` through the two others: the
    projection's key reflects the write (its bucket is R3 too, and the checkpoint says how
    far the bucket had got, which the read asks the replica for)."""
    app = shop("ryw", replicas=3)
    orders = app.app.projection("ryworders")
    stale_direct = 0
    async with (
        one_bus_per_node(nats_cluster, app.app) as buses,
        Projector(buses[0], app.app.projections.values()),
        contextlib.AsyncExitStack() as stack,
    ):
        lives = [await stack.enter_async_context(LiveView(bus, orders)) for bus in buses]
        for i in range(ROUNDS // 8):
            shipped = await buses[i % 3].publish(app.placed(total=i), f"o{i}")
            shipped = await buses[i % 3].publish(app.shipped(), f"o{i}")
            for reader, live in ((buses[j], lives[j]) for j in ((i + 1) % 3, (i + 2) % 3)):
                view = ProjectionView(reader, orders)
                status = await view.wait_for(shipped.seq, timeout=10)
                bucket = orders.bucket(status.generation)
                plain = await read_last(reader.nc, f"KV_{bucket}", [f"$KV.{bucket}.o{i}"], 1)
                stale_direct += not plain
                await live.wait_for(shipped.seq, timeout=10)
                for found in (await view.get(f"o{i}"), await live.get(f"o{i}")):
                    assert found is not None, f"round {i}"
                    assert found[0].status == "shipped", f"round {i}"
    print(f"plain direct gets of a new key through another node: {stale_direct} missing")


@pytest.mark.slow
async def test_projector_failover_on_the_cluster_equals_a_full_fold(
    nats_cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    """Two `bus projector` processes on different nodes, R3 everything; the one holding
    leases is killed (kill -9) while events keep coming; the other takes over, reading its
    records and checkpoints fresh, and every projection ends equal to a full fold."""
    from tests.chaos.cluster_app import SHOP

    def projector(node: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BUS_NATS_URL": nats_cluster.urls[node], "BUS_REPLICAS": "3"}
        command = [BUS, "projector", "--app", "tests.chaos.cluster_app:app"]
        return stack.enter_context(running(command, tmp_path / f"projector{node}.log", env))

    async def load(start: int) -> dict[str, int]:
        """600 events across both streams; the last sequence of each."""
        last: dict[str, int] = {}
        for n in range(start, start + 600):
            event = [SHOP.placed(total=n), SHOP.shipped(), SHOP.added(quantity=n)][n % 3]
            result = await buses[2].publish(event, f"{'io'[n % 3 < 2]}{n % 9}")
            last[result.stream] = result.seq
        return last

    with contextlib.ExitStack() as stack:
        procs = [projector(0), projector(1)]
        async with one_bus_per_node(nats_cluster, SHOP.app) as buses:
            await load(0)
            await eventually_async(lambda: _holders(buses[2]), 30)
            holders = await _holders(buses[2])
            victim = next(p for p in procs if p.pid in holders)
            victim.kill()
            victim.wait()
            last = await load(600)
            for projection in SHOP.app.projections.values():
                view = ProjectionView(buses[0], projection)
                await view.wait_for(last[stream_of(projection)], timeout=60)
                assert await stored(buses[1], projection) == await full_fold(buses[1], projection)
            assert await _holders(buses[2]) == {p.pid for p in procs if p is not victim}


async def _holders(bus: Bus) -> set[int]:
    """The pids holding the leases of the shop's projections."""
    found = set()
    for name in ("forevenue", "foshipments", "foorders", "fostock"):
        with contextlib.suppress(Exception):  # no bucket or no lease yet
            entry = await (await bus.js.key_value(LEASES)).get(f"projection.{name}")
            found.add(int((entry.value or b"").decode().rsplit("-", 1)[1]))
    return found


async def eventually_async(check: Any, timeout: float) -> None:
    for _ in range(int(timeout / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")
