"""What a handler publishes is stored once, even when the handler runs twice.

A "crash" here is a Bus closed while its handler hangs after publishing: the handler is
cancelled, its message neither acked nor nak'ed, and JetStream redelivers it after `ack_wait`
to a second Bus with the same durable, whose handler publishes the same events again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bus import (
    Backoff,
    Bus,
    EmbeddedServer,
    Envelope,
    Event,
    EventRegistry,
    EventStore,
    PublishResult,
    PublishTimeout,
    StoredMessage,
    StreamSpec,
    current_bus,
)
from bus._attempts import BUCKET, AttemptRecord
from bus._followups import derived_id
from services import demo
from tests.domain import eventually


class Ordered(Event):
    __domain__ = "shop"
    __event_name__ = "ordered"
    item: str


class Reserved(Event):
    __domain__ = "shop"
    __event_name__ = "reserved"
    n: int


class Charged(Event):
    __domain__ = "shop"
    __event_name__ = "charged"
    amount: int


class Noted(Event):
    __domain__ = "audit"
    __event_name__ = "noted"
    what: str


REGISTRY = EventRegistry([Ordered, Reserved, Charged, Noted])
ACK_WAIT = 1.5  # a crashed run's message comes back after this


def streams(window: float = 120.0) -> list[StreamSpec]:
    return [
        StreamSpec.for_domain("shop", duplicate_window=window),
        StreamSpec.for_domain("audit", duplicate_window=window),
    ]


async def everything(bus: Bus, stream: str) -> list[StoredMessage]:
    out: list[StoredMessage] = []
    while page := await bus.read(stream, len(out) + 1, limit=1000):
        out.extend(page)
    return out


def names(messages: list[StoredMessage]) -> Counter[str]:
    return Counter(m.subject.split(".", 1)[1] for m in messages)


class Script:
    """A handler whose every attempt publishes the same events (with publish, publish_many and
    an atomic append), then does what `plan` says for that attempt: return, raise, hang."""

    def __init__(self, plan: dict[int, str], events: Callable[[Bus, str], Awaitable[Any]]):
        self.plan, self.events = plan, events
        self.results: dict[int, Any] = {}
        self.hanging = asyncio.Event()

    async def handle(self, event: Ordered, envelope: Envelope[Ordered]) -> None:
        order = envelope.subject.split(".")[1]
        self.results[envelope.attempt] = await self.events(current_bus(), order)
        action = self.plan.get(envelope.attempt, "return")
        if action == "raise":
            raise RuntimeError(f"attempt {envelope.attempt} fails")
        if action == "timeout":
            raise PublishTimeout("shop.x.reserved", 1.0)
        if action == "hang":
            self.hanging.set()
            await asyncio.Event().wait()  # until the Bus closes and cancels it: a crash


async def fulfil(bus: Bus, order: str) -> list[PublishResult]:
    """The follow-ups of one order, through every way of publishing."""
    results = [await bus.publish(Reserved(n=0), order), await bus.publish(Reserved(n=1), order)]
    results += await bus.publish_many([(Charged(amount=5), order), (Noted(what=order), order)])
    appended = await EventStore(bus).append("shop", order, [Charged(amount=1), Reserved(n=2)])
    return results + appended.events


@contextlib.asynccontextmanager
async def worker(
    url: str, handler: Any, window: float = 120.0, durable: str = "fulfil"
) -> AsyncIterator[Bus]:
    async with Bus(url, registry=REGISTRY, streams=streams(window), drain_timeout=1.0) as bus:
        await bus.consume(
            handler, durable=durable, ack_wait=ACK_WAIT, backoff=Backoff(base=0.05, jitter=0)
        )
        yield bus


async def order(url: str, window: float = 120.0) -> PublishResult:
    async with Bus(url, registry=REGISTRY, streams=streams(window)) as bus:
        return await bus.publish(Ordered(item="book"), "o1")


async def crash_then_rerun(
    url: str, plan: dict[int, str], window: float = 120.0, events: Any = fulfil
) -> Script:
    """Attempts up to the one planned "hang" run on a first Bus, which then closes (a
    crash); the rest run on a second one. Returns the script once the last attempt ran."""
    script = Script(plan, events)
    last = max(plan) + 1
    async with worker(url, script.handle, window):
        await order(url, window)
        await eventually(script.hanging.is_set)
    async with worker(url, script.handle, window):
        await eventually(lambda: last in script.results, timeout=30)
    return script


async def test_a_rerun_after_a_crash_stores_nothing_twice(nats_server: EmbeddedServer) -> None:
    script = await crash_then_rerun(nats_server.url, {1: "hang"})
    first, rerun = script.results[1], script.results[2]
    assert [r.event_id for r in rerun] == [r.event_id for r in first]
    assert all(r.duplicate for r in rerun)
    assert [(r.stream, r.seq) for r in rerun] == [(r.stream, r.seq) for r in first]
    async with Bus(nats_server.url) as bus:
        shop, audit = await everything(bus, "SHOP"), await everything(bus, "AUDIT")
    assert names(shop) == {"o1.ordered": 1, "o1.reserved": 3, "o1.charged": 2}
    assert names(audit) == {"o1.noted": 1}
    # Ids are UUIDs of version 8 (derived), each event keeps its own.
    ids = [m.headers["Nats-Msg-Id"] for m in shop[1:] + audit]
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {8}


async def test_a_retry_after_an_exception_stores_its_events_as_new_facts(
    nats_server: EmbeddedServer,
) -> None:
    script = Script({1: "raise"}, fulfil)
    async with worker(nats_server.url, script.handle) as bus:
        await order(nats_server.url)
        await eventually(lambda: 2 in script.results)
        await eventually(lambda: bus.consumers[0].in_flight == 0)
        shop = await everything(bus, "SHOP")
        epoch = await AttemptRecord(bus.nc, bus.js, "SHOP", "fulfil").epoch(1)
    assert names(shop) == {"o1.ordered": 1, "o1.reserved": 6, "o1.charged": 4}
    assert not any(r.duplicate for r in script.results[2])
    assert epoch == 1  # the attempt that failed, as its retry read it


async def test_a_crash_after_a_failed_attempt_repeats_that_retrys_ids(
    nats_server: EmbeddedServer,
) -> None:
    """Attempt 1 raises (its events stay), attempt 2 crashes after publishing, attempt 3
    reruns attempt 2: stored are attempt 1's events and attempt 2's, once each."""
    script = await crash_then_rerun(nats_server.url, {1: "raise", 2: "hang"})
    assert [r.event_id for r in script.results[3]] == [r.event_id for r in script.results[2]]
    assert all(r.duplicate for r in script.results[3])
    assert not {r.event_id for r in script.results[1]} & {r.event_id for r in script.results[2]}
    async with Bus(nats_server.url) as bus:
        assert names(await everything(bus, "SHOP")) == {
            "o1.ordered": 1,
            "o1.reserved": 6,
            "o1.charged": 4,
        }
        assert names(await everything(bus, "AUDIT")) == {"o1.noted": 2}


async def test_a_handler_that_could_not_reach_nats_repeats_its_ids(
    nats_server: EmbeddedServer,
) -> None:
    """A handler failing with a bus timeout did not decide to fail: its retry is a rerun."""
    script = Script({1: "timeout"}, fulfil)
    async with worker(nats_server.url, script.handle) as bus:
        await order(nats_server.url)
        await eventually(lambda: 2 in script.results)
        assert all(r.duplicate for r in script.results[2])
        assert names(await everything(bus, "SHOP"))["o1.reserved"] == 3
        # Nothing failed cleanly: nothing recorded (the bucket is not even there).
        assert await AttemptRecord(bus.nc, bus.js, "SHOP", "fulfil").epoch(1) == 0
        assert f"KV_{BUCKET}" not in [s.name for s in await bus.streams.list()]


@pytest.mark.slow
async def test_a_rerun_later_than_the_duplicate_window_stores_nothing_twice(
    nats_server: EmbeddedServer,
) -> None:
    """JetStream forgets ids after 1 s here; the rerun comes after ACK_WAIT (1.5 s)."""
    script = await crash_then_rerun(nats_server.url, {1: "hang"}, window=1.0)
    first, rerun = script.results[1], script.results[2]
    assert [(r.event_id, r.stream, r.seq) for r in rerun] == [
        (r.event_id, r.stream, r.seq) for r in first
    ]
    assert all(r.duplicate for r in rerun)
    async with Bus(nats_server.url, registry=REGISTRY) as bus:
        assert names(await everything(bus, "SHOP")) == {
            "o1.ordered": 1,
            "o1.reserved": 3,
            "o1.charged": 2,
        }
        assert names(await everything(bus, "AUDIT")) == {"o1.noted": 1}
        # JetStream itself had forgotten: the same id published by hand is stored again.
        again = await bus.publish(Noted(what="o1"), "o1", event_id=first[3].event_id)
        assert not again.duplicate


async def test_a_rerun_publishing_with_its_first_runs_expected_version(
    nats_server: EmbeddedServer,
) -> None:
    """The first run moved the aggregate past the version the rerun expects: the rerun's
    event is found stored, not refused."""

    async def guarded(bus: Bus, order: str) -> list[PublishResult]:
        return [await bus.publish(Reserved(n=0), order, expected_version=1)]

    script = await crash_then_rerun(nats_server.url, {1: "hang"}, events=guarded)
    assert script.results[2] == [
        PublishResult(r.event_id, r.subject, r.stream, r.seq, duplicate=True)
        for r in script.results[1]
    ]
    async with Bus(nats_server.url) as bus:
        assert names(await everything(bus, "SHOP")) == {"o1.ordered": 1, "o1.reserved": 1}


@pytest.mark.parametrize("fresh", [True, False])
async def test_a_rerun_appending_with_an_expected_version(
    nats_server: EmbeddedServer, fresh: bool
) -> None:
    """An append guarded by the version the rerun loads (fresh), or by the one the first run
    expected: either way the first run's batch is found, not appended again nor refused."""

    async def guarded(bus: Bus, order: str) -> list[PublishResult]:
        store = EventStore(bus)
        version = (await store.load("shop", order)).version if fresh else 1
        events = [Charged(amount=1), Reserved(n=2)]
        return (await store.append("shop", order, events, expected_version=version)).events

    script = await crash_then_rerun(nats_server.url, {1: "hang"}, events=guarded)
    assert script.results[2] == [
        PublishResult(r.event_id, r.subject, r.stream, r.seq, duplicate=True)
        for r in script.results[1]
    ]
    async with Bus(nats_server.url) as bus:
        assert names(await everything(bus, "SHOP")) == {
            "o1.ordered": 1,
            "o1.charged": 1,
            "o1.reserved": 1,
        }


async def test_an_explicit_event_id_wins(nats_server: EmbeddedServer) -> None:
    async def mine(bus: Bus, order: str) -> list[PublishResult]:
        return [await bus.publish(Reserved(n=0), order, event_id=f"mine-{order}")]

    script = Script({1: "raise"}, mine)
    async with worker(nats_server.url, script.handle) as bus:
        await order(nats_server.url)
        await eventually(lambda: 2 in script.results)
        reserved = [m for m in await everything(bus, "SHOP") if m.subject.endswith("reserved")]
    assert [m.headers["Nats-Msg-Id"] for m in reserved] == ["mine-o1"]
    assert script.results[2][0].duplicate


async def test_two_handlers_of_one_message_publish_apart(nats_server: EmbeddedServer) -> None:
    """Two durables on the same message, each publishing on the same subject: both kept."""
    seen: list[str] = []

    async def first(event: Ordered, envelope: Envelope[Ordered]) -> None:
        seen.append((await current_bus().publish(Reserved(n=1), "o1")).event_id)

    async def second(event: Ordered, envelope: Envelope[Ordered]) -> None:
        seen.append((await current_bus().publish(Reserved(n=2), "o1")).event_id)

    async with Bus(nats_server.url, registry=REGISTRY, streams=streams()) as bus:
        await bus.consume(first, durable="first")
        await bus.consume(second, durable="second")
        await bus.publish(Ordered(item="x"), "o1")
        await eventually(lambda: len(seen) == 2)
        assert names(await everything(bus, "SHOP"))["o1.reserved"] == 2
    assert len(set(seen)) == 2


async def test_tasks_a_handler_starts_share_its_count(nats_server: EmbeddedServer) -> None:
    """Publishes gathered in tasks, and one that lands after the handler returned, each get
    an id of their own."""
    done: list[PublishResult] = []

    async def spread(event: Ordered, envelope: Envelope[Ordered]) -> None:
        bus = current_bus()
        done.extend(await asyncio.gather(*(bus.publish(Reserved(n=n), "o1") for n in range(3))))
        asyncio.get_running_loop().call_later(
            0.05, lambda: done.append(asyncio.ensure_future(bus.publish(Reserved(n=3), "o1")))
        )

    async with Bus(nats_server.url, registry=REGISTRY, streams=streams()) as bus:
        await bus.consume(spread, durable="spread")
        await bus.publish(Ordered(item="x"), "o1")
        await eventually(lambda: len(done) == 4)
        late = done[3]
        assert isinstance(late, asyncio.Future)
        done[3] = await late
        assert names(await everything(bus, "SHOP"))["o1.reserved"] == 4
    assert len({r.event_id for r in done}) == 4


async def test_messages_without_an_id_still_get_ids_of_their_own(
    nats_server: EmbeddedServer,
) -> None:
    """Two messages published without Nats-Msg-Id (not by bus): their follow-ups differ."""
    ids: list[str] = []

    async def react(event: Ordered) -> None:
        ids.append((await current_bus().publish(Reserved(n=0), "o1")).event_id)

    async with Bus(nats_server.url, registry=REGISTRY, streams=streams()) as bus:
        await bus.consume(react, durable="react")
        for _ in range(2):
            await bus.js.publish(
                "shop.o1.ordered", b'{"item": "x"}', headers={"Bus-Event-Type": "Ordered"}
            )
        await eventually(lambda: len(ids) == 2)
        assert names(await everything(bus, "SHOP"))["o1.reserved"] == 2
    assert len(set(ids)) == 2


async def test_a_batch_handler_publishes_under_new_ids(nats_server: EmbeddedServer) -> None:
    """Batch handlers get no derived ids (a batch is not the same on redelivery)."""
    ids: list[str] = []

    async def batch(envelopes: list[Envelope[Ordered]]) -> None:
        bus = current_bus()
        ids.extend([(await bus.publish(Reserved(n=0), e.subject[5:7])).event_id for e in envelopes])

    async with Bus(nats_server.url, registry=REGISTRY, streams=streams()) as bus:
        await bus.consume(batch, durable="batch", batch_size=10)
        await bus.publish(Ordered(item="x"), "o1")
        await eventually(lambda: len(ids) == 1)
    assert uuid.UUID(ids[0]).version == 7


async def test_the_demo_handler_keeps_each_attempts_events(nats_server: EmbeddedServer) -> None:
    """The demo's task that fails once: progressed and failed of attempt 1, progressed and
    completed of attempt 2, each stored once."""
    app = demo.app
    async with Bus(
        nats_server.url, registry=app.registry, streams=app.streams, router=app.router
    ) as bus:
        await bus.publish(demo.TaskCreated(title="t", fail_times=1), "t1")
        await eventually(
            lambda: bus.consumers[0].in_flight == 0 and bus.consumers[0].delivered == 2, timeout=30
        )
        stored = [bus.open(m).event for m in await everything(bus, "TASKS")]
    assert [type(e).__name__ for e in stored] == [
        "TaskCreated", "TaskProgressed", "TaskFailed", "TaskProgressed", "TaskCompleted",
    ]  # fmt: skip


async def test_what_the_attempts_record_holds_is_read_with_care(bus: Bus) -> None:
    """Entries written by someone else, garbage, deleted: an epoch of 0, not an error."""
    record = AttemptRecord(bus.nc, bus.js, "SHOP", "fulfil")
    assert await record.epoch(1) == 0  # no bucket yet
    await record.failed(1, 3, within=1.0)
    assert await record.epoch(1) == 3
    kv = await bus.js.key_value(BUCKET)
    for value, epoch in ((b"not a number", 0), (b"", 0), (b"-1", 0), (b"12", 12)):
        await kv.put(record.key(1), value)
        assert await record.epoch(1) == epoch
    await kv.delete(record.key(1))
    assert await record.epoch(1) == 0
    assert await record.epoch(2) == 0


def test_derived_ids_are_uuids_that_differ_by_every_part() -> None:
    seed = "SHOP\x1ffulfil\x1f7\x1fsome-id\x1f0"
    one = derived_id(seed, "shop.o1.reserved", 0)
    assert one == derived_id(seed, "shop.o1.reserved", 0)
    assert uuid.UUID(one).version == 8
    assert str(uuid.UUID(one)) == one
    others = {
        derived_id(seed, "shop.o1.reserved", 1),
        derived_id(seed, "shop.o2.reserved", 0),
        derived_id(seed.replace("\x1f0", "\x1f1"), "shop.o1.reserved", 0),
        derived_id(seed.replace("fulfil", "other"), "shop.o1.reserved", 0),
    }
    assert len(others) == 4
    assert one not in others
    hostile = derived_id("x" * 100_000 + "\r\n\x00é", "shop.o1.reserved", 0)
    assert len(hostile) == 36
    assert uuid.UUID(hostile).version == 8
