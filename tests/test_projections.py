"""Projections on a real server: fold, query, read-your-writes, crash replay, rebuild, DLQ."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import (
    Bus,
    EmbeddedServer,
    Envelope,
    Event,
    Projection,
    ProjectionStatus,
    ProjectionView,
    Projector,
    StreamSpec,
)
from bus._nats.wire import Outgoing
from bus._projection import META_BUCKET

from .domain import eventually

COUNTERS = StreamSpec.for_domain("cnt")


class Added(Event):
    __domain__ = "cnt"
    __event_name__ = "added"
    n: int


class Cleared(Event):
    __domain__ = "cnt"
    __event_name__ = "cleared"


class Total(msgspec.Struct):
    total: int = 0
    events: int = 0


def fold(state: Total, envelope: Envelope[Event]) -> Total:
    match envelope.event:
        case Added(n=n):
            if n == 13:
                raise ValueError("unlucky number")
            return Total(state.total + n, state.events + 1)
        case Cleared():
            return Total(0, state.events + 1)
    return state


def counter_key(envelope: Envelope[Event]) -> str:
    return envelope.subject.split(".")[1]


_names = itertools.count()


def totals(name: str | None = None) -> Projection[Total]:
    return Projection(
        name or f"totals{next(_names)}",
        subjects=("cnt.>",),
        state=Total,
        key=counter_key,
        apply=fold,
        batch_size=7,  # small, so tests cross many batch boundaries
    )


def expected(ops: list[tuple[str, int | None]]) -> dict[str, Total]:
    """The pure fold of the operations, to compare with."""
    out: dict[str, Total] = {}
    for key, n in ops:
        state = out.get(key, Total())
        out[key] = (
            Total(0, state.events + 1) if n is None else Total(state.total + n, state.events + 1)
        )
    return out


async def publish_ops(bus: Bus, ops: list[tuple[str, int | None]]) -> int:
    items = [(Added(n=n) if n is not None else Cleared(), key) for key, n in ops]
    results = await bus.publish_many(items) if items else []
    return results[-1].seq if results else 0


async def snapshot(view: ProjectionView[Total]) -> dict[str, Total]:
    page, _ = await view.list(limit=1000)
    return dict(page)


@pytest.fixture
async def counters(nats_url: str):  # type: ignore[no-untyped-def]
    async with Bus(nats_url, streams=[COUNTERS]) as bus:
        bus.registry.register(Added)
        bus.registry.register(Cleared)
        yield bus


async def test_fold_query_and_read_your_writes(counters: Bus) -> None:
    projection = totals()
    view = ProjectionView(counters, projection)
    ops = [("a", 1), ("b", 2), ("a", 3), ("c", None), ("a", None), ("b", 5)] * 4
    async with Projector(counters, [projection]):
        last = await publish_ops(counters, ops)
        status = await view.wait_for(last, timeout=10)
        assert status.position >= last
        assert status.lag == 0
        assert await snapshot(view) == expected(ops)
        state, seq = await view.get("b") or (None, 0)
        assert state == expected(ops)["b"]
        assert seq == last
        assert await view.get("nobody") is None
        page, cursor = await view.list(limit=2)
        assert [k for k, _ in page] == ["a", "b"]
        rest, end = await view.list(limit=2, cursor=cursor)
        assert [k for k, _ in rest] == ["c"]
        assert end is None
        prefixed, _ = await view.list(prefix="b")
        assert [k for k, _ in prefixed] == ["b"]
        # read-your-writes: one more event, waited for by sequence, not by sleeping
        after = await counters.publish(Added(n=100), "a")
        await view.wait_for(after.seq, timeout=5)
        assert (await view.get("a") or (Total(), 0))[0].total == 100


async def test_replay_after_a_lost_checkpoint_applies_nothing_twice(counters: Bus) -> None:
    projection = totals()
    view = ProjectionView(counters, projection)
    ops = [(k, n) for n in range(1, 12) for k in ("x", "y")]
    async with Projector(counters, [projection]):
        await view.wait_for(await publish_ops(counters, ops), timeout=10)
    # As if the process died after writing state but before its checkpoint, at position 3.
    status = await view.status()
    rewound = msgspec.structs.replace(status, position=3)
    await counters.publisher.send(
        Outgoing(f"$KV.{META_BUCKET}.{projection.name}", msgspec.json.encode(rewound), {}, "")
    )
    async with Projector(counters, [projection]) as projector:
        await eventually(lambda: projector.status(projection.name).position >= status.position)
        assert await snapshot(view) == expected(ops)


async def test_a_stray_write_in_its_bucket_is_not_taken_for_a_takeover(counters: Bus) -> None:
    """Key writes expect the bucket's last sequence: a write that is not a fence moving in
    between is refused, but the projector sees its fence still stands and goes on."""
    projection = totals()
    view = ProjectionView(counters, projection)
    first = [("s", 1), ("t", 2)] * 5
    async with Projector(counters, [projection]) as projector:
        await view.wait_for(await publish_ops(counters, first), timeout=10)
        stray = Outgoing(f"$KV.{projection.bucket(1)}.stray", b"not a record", {}, "")
        await counters.publisher.send(stray)
        more = [("s", 4), ("u", 8)] * 5
        await view.wait_for(await publish_ops(counters, more), timeout=10)
        assert projector.status(projection.name).failures == 0
        got = {k: (await view.get(k) or (None, 0))[0] for k in "stu"}
        assert got == expected(first + more)


async def test_rebuild_switches_without_readers_seeing_gaps(counters: Bus) -> None:
    projection = totals()
    view = ProjectionView(counters, projection)
    ops = [(f"k{i % 5}", i % 7) for i in range(300)]
    want = expected(ops)
    async with Projector(counters, [projection]) as projector:
        await view.wait_for(await publish_ops(counters, ops), timeout=20)
        reads = 0
        stop = asyncio.Event()

        async def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                assert await snapshot(view) == want  # never empty, never partial
                reads += 1

        reading = asyncio.create_task(reader())
        seen: list[ProjectionStatus] = []
        status = await projector.rebuild(projection.name, progress=seen.append)
        await asyncio.sleep(0.2)
        stop.set()
        await reading
        assert reads > 0
        assert status.generation == 2
        assert seen
        assert seen[-1].rebuilding == 2
        assert await snapshot(view) == want
        assert (await view.status()).generation == 2
        buckets = [s.name for s in await counters.streams.list()]
        assert f"KV_{projection.bucket(1)}" not in buckets
        assert f"KV_{projection.bucket(2)}" in buckets


async def test_an_event_apply_rejects_goes_to_dead_letters_named(counters: Bus) -> None:
    projection = totals()
    view = ProjectionView(counters, projection)
    async with Projector(counters, [projection]) as projector:
        await publish_ops(counters, [("a", 1), ("a", 13), ("a", 2)])
        await counters.js.publish("cnt.a.added", b"not json")
        last = await counters.publish(Added(n=4), "a")
        await view.wait_for(last.seq, timeout=10)
        assert (await view.get("a") or (Total(), 0))[0] == Total(7, 3)
        status = projector.status(projection.name)
        assert status.failures == 2
        letters = await counters.dead_letters("CNT")
        assert {d.consumer for d in letters} == {f"projection:{projection.name}"}
        reasons = sorted(d.reason for d in letters)
        assert reasons[0].startswith("apply failed: ValueError: unlucky number")
        assert reasons[1].startswith("undecodable")


ops_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.integers(0, 9))),
    max_size=40,
)


@settings(max_examples=12)
@given(ops=ops_strategy, crash_at=st.integers(0, 40))
def test_live_rebuild_and_crash_resume_agree(
    ops: list[tuple[str, int | None]], crash_at: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """For random histories: live folding == a rebuild == a resume after a crash anywhere."""

    async def check() -> None:
        with EmbeddedServer(store_dir=tmp_path_factory.mktemp("prop")) as server:
            async with Bus(server.url, streams=[COUNTERS]) as bus:
                bus.registry.register(Added)
                bus.registry.register(Cleared)
                projection = totals()
                view = ProjectionView(bus, projection)
                want = expected(ops)
                last = await publish_ops(bus, ops)
                async with Projector(bus, [projection]) as projector:
                    await view.wait_for(last, timeout=10)
                    assert await snapshot(view) == want
                    await projector.rebuild(projection.name)
                    assert await snapshot(view) == want
                status = await view.status()
                crashed = msgspec.structs.replace(status, position=min(crash_at, last))
                subject = f"$KV.{META_BUCKET}.{projection.name}"
                await bus.publisher.send(Outgoing(subject, msgspec.json.encode(crashed), {}, ""))
                async with Projector(bus, [projection]):
                    await view.wait_for(last, timeout=10)
                    assert await snapshot(view) == want

    asyncio.run(check())


async def test_projections_of_one_stream_share_wake_ups_and_reads(counters: Bus) -> None:
    first, second = totals(), totals()
    views = [ProjectionView(counters, p) for p in (first, second)]
    ops = [("a", 1), ("b", 2), ("a", 3)] * 5
    async with Projector(counters, [first, second]) as projector:
        last = await publish_ops(counters, ops)
        for view in views:
            await view.wait_for(last, timeout=10)
            assert await snapshot(view) == expected(ops)
        # both idle now: two identical reads at once are one request to the server
        spy = await counters.nc.subscribe(f"$JS.API.DIRECT.GET.{COUNTERS.name}")
        await counters.nc.flush()
        shared = projector._shared
        a, b = await asyncio.gather(*(shared.read(COUNTERS.name, 1, 7, "cnt.>") for _ in "ab"))
        assert a == b
        assert [m.seq for m in a] == list(range(1, 8))
        await spy.next_msg(timeout=1)
        with pytest.raises(TimeoutError):
            await spy.next_msg(timeout=0.3)
        await spy.unsubscribe()
        # halting one leaves the other woken by the lane they shared, and it comes back
        await projector.halt(first.name)
        later = await publish_ops(counters, [("c", 4)])
        await views[1].wait_for(later, timeout=10)
        assert (await views[0].status()).position == last
        await projector.run(first.name)
        await views[0].wait_for(later, timeout=10)


async def test_a_clean_stop_leaves_the_last_checkpoint_written(counters: Bus) -> None:
    """Checkpoints are written while the next batch is read; stopping waits for the last."""
    projection = totals()
    async with Projector(counters, [projection]) as projector:
        last = await publish_ops(counters, [("s", n) for n in range(1, 30)])
        await eventually(lambda: projector.status(projection.name).position >= last)
    assert (await ProjectionView(counters, projection).status()).position == last


async def test_a_caught_up_projection_folds_pushed_messages_without_reading(
    counters: Bus,
) -> None:
    projection = totals()
    view = ProjectionView(counters, projection)
    async with Projector(counters, [projection]) as projector:
        live = projector._live[projection.name]
        await view.wait_for(await publish_ops(counters, [("p", 1)]), timeout=10)
        await eventually(lambda: live.current._tail is not None)
        spy = await counters.nc.subscribe(f"$JS.API.DIRECT.GET.{COUNTERS.name}")
        ops = [("p", n) for n in range(2, 12)]
        for key, n in ops:
            await view.wait_for(await publish_ops(counters, [(key, n)]), timeout=10)
        assert await snapshot(view) == expected([("p", 1), *ops])
        with pytest.raises(TimeoutError):  # every event came pushed: nothing was read
            await spy.next_msg(timeout=0.3)
        await spy.unsubscribe()


async def test_a_lost_or_overrun_tail_falls_back_to_reading(
    counters: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer deleted under it, or more pushed than it may hold: the projection reads,
    misses nothing, and follows again once caught up."""
    monkeypatch.setattr("bus._feed.TAIL_BACKLOG", 3)
    projection = totals()
    view = ProjectionView(counters, projection)
    ops = [(k, n) for n in range(1, 40) if n != 13 for k in "xyz"]  # 13: refused
    async with Projector(counters, [projection]) as projector:
        live = projector._live[projection.name]
        await view.wait_for(await publish_ops(counters, ops[:3]), timeout=10)
        await eventually(lambda: live.current._tail is not None)
        tail = live.current._tail
        assert tail is not None
        await counters.js.delete_consumer(COUNTERS.name, tail._consumer)
        await view.wait_for(await publish_ops(counters, ops[3:6]), timeout=10)
        await view.wait_for(await publish_ops(counters, ops[6:]), timeout=10)  # overruns it
        assert await snapshot(view) == expected(ops)
        await eventually(lambda: live.current._tail not in (None, tail))
