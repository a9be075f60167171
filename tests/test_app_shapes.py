"""Read-your-writes and folds on an application of another shape than the demo's: two
streams, several event types each, projections reading all of a stream, one subject of it,
or two. Property-based: any sequence of appends across subjects.

After each acknowledged append, `after_seq` of it answers on every projection of its stream
(whatever subject the event had: a projection that does not read it has seen it all the
same), the touched key then reads as the reference fold says, and at the end every
projection equals a full fold of the events it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import BeyondStreamEnd, Bus, EmbeddedServer, Envelope, LiveView, ProjectionView, Projector
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve
from tests.shapes import full_fold, shop, stored, stream_of

BOUND = 10.0  # seconds an `after_seq` may take to answer (it takes milliseconds)
SHOP = shop()
examples = itertools.count()

operation = st.tuples(
    st.sampled_from(["placed", "shipped", "cancelled", "added", "removed"]),
    st.integers(0, 3),  # which order or item
    st.integers(1, 50),  # an amount
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(store_dir=tmp_path_factory.mktemp("shapes")) as started:
        yield started


def event_for(kind: str, amount: int) -> Any:
    match kind:
        case "placed":
            return SHOP.placed(total=amount)
        case "shipped":
            return SHOP.shipped()
        case "cancelled":
            return SHOP.cancelled(reason=f"r{amount}")
        case "added":
            return SHOP.added(quantity=amount)
    return SHOP.removed(quantity=amount)


async def appends_are_read_by_every_projection(url: str, ops: list[tuple[str, int, int]]) -> None:
    projections = list(SHOP.app.projections.values())
    async with (
        Bus(url, registry=SHOP.app.registry, streams=SHOP.app.streams) as bus,
        Projector(bus, projections),
        contextlib.AsyncExitStack() as stack,
    ):
        views = {p.name: ProjectionView(bus, p) for p in projections}
        lives = {p.name: await stack.enter_async_context(LiveView(bus, p)) for p in projections}
        expected = {p.name: await stored(bus, p) for p in projections}
        for kind, which, amount in ops:
            event = event_for(kind, amount)
            result = await bus.publish(event, f"a{which}")
            envelope = Envelope(
                event=event, id=result.event_id, subject=result.subject, occurred_at="",
                correlation_id=result.event_id, stream=result.stream, seq=result.seq,
            )  # fmt: skip
            for projection in projections:
                if stream_of(projection) != result.stream:
                    continue
                reads = any(
                    s == result.subject or s.endswith(">") or s.split(".")[2] == kind
                    for s in projection.subjects
                )
                key = projection.key(envelope) if reads else None
                if key is not None:
                    state = expected[projection.name].get(key, projection.initial())
                    expected[projection.name][key] = projection.apply(state, envelope)
                for view in (views[projection.name], lives[projection.name]):
                    status = await view.wait_for(result.seq, timeout=BOUND)
                    assert status.position >= result.seq
                    if key is not None:
                        found = await view.get(key)
                        assert found is not None
                        assert found[0] == expected[projection.name][key], projection.name
        for projection in projections:
            assert await stored(bus, projection) == await full_fold(bus, projection)


@settings(max_examples=25)
@given(ops=st.lists(operation, min_size=1, max_size=20))
def test_after_seq_answers_on_every_projection_of_the_stream(
    server: EmbeddedServer, ops: list[tuple[str, int, int]]
) -> None:
    next(examples)
    asyncio.run(appends_are_read_by_every_projection(server.url, ops))


async def test_a_projection_reading_one_event_type_reaches_the_last_write(nats_url: str) -> None:
    """The issue's example: placed then shipped; revenue reads only `placed`, and
    `after_seq` of the `shipped` answers (it never did: the projection never applied it)."""
    async with (
        Bus(nats_url, registry=SHOP.app.registry, streams=SHOP.app.streams) as bus,
        Projector(bus, SHOP.app.projections.values()) as projector,
    ):
        await bus.publish(SHOP.placed(total=42), "o1")
        shipped = await bus.publish(SHOP.shipped(), "o1")
        revenue = SHOP.app.projection("revenue")
        status = await ProjectionView(bus, revenue).wait_for(shipped.seq, timeout=BOUND)
        assert status.position >= shipped.seq
        found = await ProjectionView(bus, revenue).get("all")
        assert found is not None
        assert found[0].total == 42
        # Quiet, the projector itself moves over what it does not read.
        for _ in range(200):
            if projector.status("revenue").position >= shipped.seq:
                break
            await asyncio.sleep(0.05)
        assert projector.status("revenue").position == shipped.seq
        assert (await ProjectionView(bus, revenue).status()).position == shipped.seq


async def test_after_seq_beyond_the_stream_end_is_refused(nats_url: str) -> None:
    """A sequence the stream does not hold yet is refused (no event there to wait for), on a
    projection reading one subject at once, on one reading it all once waiting is slow; a
    sequence already seen answers at once."""
    async with (
        Bus(nats_url, registry=SHOP.app.registry, streams=SHOP.app.streams) as bus,
        Projector(bus, SHOP.app.projections.values()),
    ):
        placed = await bus.publish(SHOP.placed(total=5), "o1")
        for name in ("shipments", "orders"):
            view = ProjectionView(bus, SHOP.app.projection(name))
            assert (await view.wait_for(placed.seq, timeout=BOUND)).position >= placed.seq
            with pytest.raises(BeyondStreamEnd) as refused:
                await view.wait_for(placed.seq + 5, timeout=BOUND)
            assert (refused.value.stream, refused.value.last) == ("ORDERS", placed.seq)
            async with LiveView(bus, SHOP.app.projection(name)) as live:
                with pytest.raises(BeyondStreamEnd):
                    await live.wait_for(placed.seq + 1, timeout=BOUND)


def test_the_shapes_are_what_they_say() -> None:
    names = {p.name: p.subjects for p in SHOP.app.projections.values()}
    assert names["revenue"] == ("orders.*.placed",)
    assert len(names["stock"]) == 2


async def test_read_your_writes_over_http_on_a_projection_reading_one_event_type(
    nats_url: str,
) -> None:
    """The issue's transcript: placed, shipped, then revenue with after_seq of the shipped."""
    async with (
        Bus(nats_url, registry=SHOP.app.registry, streams=SHOP.app.streams) as bus,
        Projector(bus, SHOP.app.projections.values()),
    ):
        async for http in serve(create_app(SHOP.app, nats_url, api_keys=KEYS)):
            placed = await http.post(
                "/api/v1/events/orders.o1.placed", json={"total": 42}, headers=WRITE
            )
            shipped = await http.post("/api/v1/events/orders.o1.shipped", json={}, headers=WRITE)
            assert (placed.status_code, shipped.status_code) == (201, 201)
            seq = shipped.json()["seq"]
            read = await http.get(
                f"/api/v1/projections/revenue/all?after_seq={seq}&timeout=3", headers=READ
            )
            assert read.status_code == 200, read.text
            assert read.json()["state"] == {"orders": 1, "total": 42}
            for bad, status in ((seq + 10, 400), (-1, 422), ("two", 422), (0, 422)):
                refused = await http.get(
                    f"/api/v1/projections/revenue/all?after_seq={bad}", headers=READ
                )
                assert refused.status_code == status, (bad, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
            listed = (await http.get("/api/v1/projections", headers=READ)).json()
            assert {p["name"]: p["lag"] for p in listed}["revenue"] == 0
