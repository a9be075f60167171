"""`bus.testing.run_app`: a user's App run against the real server, settled before asserting.

Two app shapes: the demo (one stream, follow-up events, retries) and a small shop of two
streams with several event types, a flaky handler, a poison message and projections that
read a whole stream or one event type of it.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from bus import (
    App,
    Backoff,
    BusError,
    BusTimeout,
    Envelope,
    Event,
    Projection,
    StreamSpec,
    current_bus,
)
from bus.testing import run_app
from services import demo


class CartOpened(Event):
    __domain__ = "carts"
    __event_name__ = "opened"


class ItemAdded(Event):
    __domain__ = "carts"
    __event_name__ = "item_added"
    price: int
    flaky: int = 0  # attempts that fail before the charge goes through


class PaymentTaken(Event):
    __domain__ = "payments"
    __event_name__ = "taken"
    amount: int


class PaymentRefused(Event):
    __domain__ = "payments"
    __event_name__ = "refused"
    reason: str


class Count(msgspec.Struct):
    events: int = 0


class Total(msgspec.Struct):
    payments: int = 0
    amount: int = 0


def count(state: Count, envelope: Envelope[Event]) -> Count:
    return Count(state.events + 1)


def add(state: Total, envelope: Envelope[Event]) -> Total:
    assert isinstance(envelope.event, PaymentTaken)
    return Total(state.payments + 1, state.amount + envelope.event.amount)


def cart_of(envelope: Envelope[Event]) -> str:
    return envelope.subject.split(".")[1]


shop = App(
    "cartshop",
    streams=[StreamSpec.for_domain("carts"), StreamSpec.for_domain("payments")],
    events=[CartOpened, ItemAdded, PaymentTaken, PaymentRefused],
    projections=[
        Projection("cart_events", ("carts.>",), Count, cart_of, count),
        Projection("takings", ("payments.*.taken",), Total, lambda e: "all", add),
    ],
)


@shop.subscribe(durable="charger", max_deliver=2, backoff=Backoff(base=0.05, max=0.2))
async def charge(event: ItemAdded, envelope: Envelope[ItemAdded]) -> None:
    if event.price < 0:
        raise ValueError("a negative price is refused on every attempt")
    if envelope.attempt <= event.flaky:
        raise RuntimeError(f"flaky attempt {envelope.attempt}")
    await current_bus().publish(PaymentTaken(amount=event.price), cart_of(envelope))


async def test_settle_waits_for_retries_follow_ups_and_dead_letters(nats_url: str) -> None:
    async with run_app(shop, nats_url) as running:
        await running.bus.publish(CartOpened(), "c1")
        await running.bus.publish(ItemAdded(price=5, flaky=1), "c1")  # handled on attempt 2
        await running.bus.publish(ItemAdded(price=7), "c1")
        await running.bus.publish(ItemAdded(price=-1), "c2")  # dead letter after 2 attempts
        await running.settle()
        assert await running.state("cart_events", "c1") == Count(3)
        assert await running.state("cart_events", "c2") == Count(1)
        assert await running.state("takings", "all") == Total(payments=2, amount=12)
        [letter] = await running.bus.dead_letters("CARTS", 1, 10)
        assert (letter.original_subject, letter.consumer) == ("carts.c2.item_added", "charger")
        assert await running.state("cart_events", "c3") is None


async def test_the_edge_in_process(nats_url: str) -> None:
    async with run_app(shop, nats_url, edge=True) as running:
        posted = await running.http.post("/api/v1/events/carts.c9.item_added", json={"price": 30})
        assert posted.status_code == 201, posted.text
        refused = await running.http.post("/api/v1/events/carts.c9.item_added", json={"p": 1})
        assert refused.status_code == 422
        await running.settle()
        read = await running.http.get("/api/v1/projections/takings/all")
        assert read.json()["state"] == {"payments": 1, "amount": 30}
        anonymous = await running.http.get("/api/v1/streams", headers={"Authorization": ""})
        assert anonymous.status_code == 401
    async with run_app(shop, nats_url) as running:
        with pytest.raises(RuntimeError, match="edge=True"):
            running.http  # noqa: B018


async def test_the_demo_settles_after_its_follow_up_events(nats_url: str) -> None:
    async with run_app(demo.app, nats_url) as running:
        await running.bus.publish(demo.TaskCreated(title="twice", fail_times=1), "t1")
        await running.settle()
        task = await running.state("task", "t1")
        assert (task.status, task.attempts) == ("completed", 2)
        assert await running.state("task_counts", "completed") == demo.StatusCount(1)
        assert await running.state("task_counts", "failed") == demo.StatusCount(1)


stuck = App("stuck", streams=[StreamSpec.for_domain("carts")], events=[CartOpened])
release = asyncio.Event()


@stuck.subscribe(durable="waiter", ack_wait=60)
async def wait_forever(event: CartOpened) -> None:
    await release.wait()


async def test_settle_names_what_is_outstanding_when_it_times_out(nats_url: str) -> None:
    async with run_app(stuck, nats_url) as running:
        await running.bus.publish(CartOpened(), "c1")
        with pytest.raises(BusTimeout, match="handler 'waiter' has 0 pending and 1 unack"):
            await running.settle(timeout=1)
        release.set()
        await running.settle()
    with pytest.raises(BusError):
        await running.settle()  # the app stopped with the harness


async def test_settle_with_a_projection_that_skips_the_last_event(nats_url: str) -> None:
    """`takings` reads only payments.*.taken: waiting for the stream's last sequence must
    not hang when that last event is one it does not read (read-your-writes in stream
    terms, issue 14 item 1)."""
    async with run_app(shop, nats_url) as running:
        await running.bus.publish(PaymentTaken(amount=3), "c1")
        await running.bus.publish(PaymentRefused(reason="card expired"), "c1")
        await running.settle(timeout=10)
        assert await running.state("takings", "all") == Total(payments=1, amount=3)
