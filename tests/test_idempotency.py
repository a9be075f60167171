"""An `Idempotency-Key` (and MCP's `idempotency_key`) outlives JetStream's duplicate window:
the edge keeps each key's first result in `bus_idempotency`, on the demo and on a shop app
with two streams (one with a 1 s window, so that tests can outlive it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from bus import (
    App,
    Bus,
    Claim,
    ConfigError,
    EmbeddedCluster,
    Event,
    EventStore,
    IdempotencyRecords,
    InFlight,
    Projection,
    Replay,
    StreamNotFound,
    StreamSpec,
)
from bus._idempotency import STREAM
from services.demo import app as demo
from services.edge import create_app
from services.edge.events import BatchRequest, batch_request, event_request
from services.runtime.settings import Settings
from tests.edge import KEYS, READ, WRITE, serve
from tests.test_mcp import mcp_client


class OrderPlaced(Event):
    __domain__ = "orders"
    __event_name__ = "placed"
    total: int


class OrderShipped(Event):
    __domain__ = "orders"
    __event_name__ = "shipped"
    carrier: str = ""


class PaymentTaken(Event):
    __domain__ = "payments"
    __event_name__ = "taken"
    amount: int


class Revenue(msgspec.Struct):
    total: int = 0


SHOP = App(
    "shop",
    streams=[
        StreamSpec.for_domain("orders", duplicate_window=1.0),
        StreamSpec.for_domain("payments"),
    ],
    events=[OrderPlaced, OrderShipped, PaymentTaken],
    projections=[
        Projection(
            "revenue",
            ("orders.*.placed",),
            Revenue,
            lambda e: "all",
            lambda s, e: Revenue(s.total + e.event.total),
        )
    ],
)


@dataclass
class Edge:
    """An edge under uvicorn, a bus beside it, and a valid event for each of its streams."""

    client: httpx.AsyncClient
    bus: Bus
    subject: str  # in `stream`
    data: dict[str, Any]
    stream: str
    other_subject: str  # of another event type (or stream)
    other_data: dict[str, Any]

    async def last_seq(self) -> int:
        return (await self.bus.streams.info(self.stream)).last_seq

    async def bucket_exists(self) -> bool:
        try:
            await self.bus.streams.info(STREAM)
        except StreamNotFound:
            return False
        return True


SHOP_EVENTS = ("orders.o1.placed", {"total": 42}, "ORDERS", "payments.p1.taken", {"amount": 42})
DEMO_EVENTS = (
    "tasks.t1.created",
    {"title": "once"},
    "TASKS",
    "tasks.t1.progressed",
    {"attempt": 1},
)


async def serving(nats_url: str, app: App, events: tuple[Any, ...]) -> AsyncIterator[Edge]:
    async with Bus(nats_url, registry=app.registry, streams=app.streams) as bus:
        async for client in serve(create_app(app, nats_url, api_keys=KEYS)):
            subject, data, stream, other_subject, other_data = events
            yield Edge(client, bus, subject, data, stream, other_subject, other_data)


@pytest.fixture
async def shop(nats_url: str) -> AsyncIterator[Edge]:
    async for edge in serving(nats_url, SHOP, SHOP_EVENTS):
        yield edge


@pytest.fixture(params=["shop", "demo"])
async def edge_app(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    """The shop, then the demo."""
    app, events = (SHOP, SHOP_EVENTS) if request.param == "shop" else (demo, DEMO_EVENTS)
    async for edge in serving(nats_url, app, events):
        yield edge


def _key() -> str:
    return f"key-{uuid.uuid4()}"


async def post(
    edge: Edge, subject: str, data: Any, key: str | None, **headers: str
) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await edge.client.post(
        f"/api/v1/events/{subject}", json=data, headers={**WRITE, **extra, **headers}
    )


async def call_tool(edge: Edge, arguments: dict[str, Any]) -> dict[str, Any]:
    """`publish_event` through the legacy REST shape: the tool's answer."""
    call = {"name": "publish_event", "arguments": arguments}
    response = await edge.client.post("/mcp/v2/tools/call", json=call, headers=WRITE)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def outlive_the_window(bus: Bus) -> None:
    """Until JetStream has forgotten every event id ORDERS stored so far: a probe stored
    after them is taken again instead of dropped as a duplicate (the probe is stored twice)."""
    probe, probe_id = OrderShipped(carrier="probe"), f"probe-{uuid.uuid4()}"
    await bus.publish(probe, "probe", event_id=probe_id)
    deadline = time.monotonic() + 15
    while (await bus.publish(probe, "probe", event_id=probe_id)).duplicate:
        assert time.monotonic() < deadline, "JetStream kept the probe's id past its window"
        await asyncio.sleep(0.05)


# -- the same request again, after the stream's own window ---------------------------------


@pytest.mark.parametrize("transport", ["http", "batch", "mcp-legacy", "mcp"])
async def test_the_same_key_after_the_window_returns_the_first_result_and_stores_nothing(
    shop: Edge, transport: str
) -> None:
    key = _key()

    async def send() -> tuple[Any, bool]:
        """The result, and whether it says it is a replay (HTTP only)."""
        if transport == "http":
            response = await post(shop, shop.subject, shop.data, key)
        elif transport == "batch":
            batch = {"domain": "orders", "id": "o1", "events": [{"event": "placed", "data": {"total": 1}}, {"event": "shipped", "data": {}}]}  # fmt: skip
            response = await shop.client.post(
                "/api/v1/events:batch", json=batch, headers={**WRITE, "Idempotency-Key": key}
            )
        elif transport == "mcp-legacy":
            answer = await call_tool(
                shop, {"subject": shop.subject, "data": shop.data, "idempotency_key": key}
            )
            assert answer["isError"] is False, answer
            return json.loads(answer["content"][0]["text"]), False
        else:
            async with mcp_client(shop.client, "w-key", "2026-07-28") as client:
                arguments = {"subject": shop.subject, "data": shop.data, "idempotency_key": key}
                result = await client.call_tool("publish_event", arguments)
            assert not result.is_error, result.content
            return json.loads(result.content[0].text), False  # type: ignore[union-attr]
        assert response.status_code == 201, response.text
        return response.json(), response.headers.get("Idempotent-Replayed") == "true"

    first, replayed = await send()
    assert not replayed
    await outlive_the_window(shop.bus)
    before = await shop.last_seq()

    again, replayed = await send()
    assert again == first
    assert replayed is (transport in ("http", "batch"))
    assert await shop.last_seq() == before  # stored nothing

    # JetStream alone would have stored it again: its window is past.
    event_id = first["events"][0]["id"] if transport == "batch" else first["id"]
    assert event_id.startswith(key)
    assert not (await shop.bus.publish(OrderPlaced(total=1), "o1", event_id=event_id)).duplicate


async def test_a_replay_answers_with_the_first_status_and_body(edge_app: Edge) -> None:
    key = _key()
    first = await post(edge_app, edge_app.subject, edge_app.data, key)
    before = await edge_app.last_seq()
    again = await post(edge_app, edge_app.subject, dict(reversed(edge_app.data.items())), key)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == key  # the key is the event id, as before
    assert await edge_app.last_seq() == before


# -- another request with a used key -------------------------------------------------------


@pytest.mark.parametrize(
    "change", ["body", "aggregate", "event type or stream", "If-Match", "batch", "mcp"]
)
async def test_the_same_key_for_another_request_gets_422_and_stores_nothing(
    edge_app: Edge, change: str
) -> None:
    key = _key()
    assert (await post(edge_app, edge_app.subject, edge_app.data, key)).status_code == 201
    before = await edge_app.last_seq()
    domain, aggregate, name = edge_app.subject.split(".")
    if change == "mcp":
        changed = {k: v * 2 for k, v in edge_app.data.items()}
        arguments = {"subject": edge_app.subject, "data": changed, "idempotency_key": key}
        answer = await call_tool(edge_app, arguments)
        assert answer["isError"] is True
        assert "422: this Idempotency-Key was used for another" in answer["content"][0]["text"]
    else:
        if change == "batch":
            batch = {"domain": domain, "id": aggregate, "events": [{"event": name, "data": edge_app.data}]}  # fmt: skip
            response = await edge_app.client.post(
                "/api/v1/events:batch", json=batch, headers={**WRITE, "Idempotency-Key": key}
            )
        else:
            subject, data, headers = edge_app.subject, dict(edge_app.data), {}
            if change == "body":
                data = {k: v * 2 for k, v in data.items()}
            elif change == "aggregate":
                subject = f"{domain}.other.{name}"
            elif change == "event type or stream":
                subject, data = edge_app.other_subject, edge_app.other_data
            else:
                headers = {"If-Match": "1"}
            response = await post(edge_app, subject, data, key, **headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "Idempotency-Key was used for another request" in response.json()["detail"]
    assert await edge_app.last_seq() == before
    assert (await post(edge_app, edge_app.subject, edge_app.data, key)).status_code == 201


# -- in flight -----------------------------------------------------------------------------


async def test_a_key_in_flight_gets_409_then_its_result(edge_app: Edge) -> None:
    """The first request is made to be in flight by claiming its key through the library."""
    key = _key()
    records = IdempotencyRecords(edge_app.bus)
    claim = await records.begin(key, event_request(edge_app.subject, edge_app.data, None))
    assert isinstance(claim, Claim)
    before = await edge_app.last_seq()

    busy = await post(edge_app, edge_app.subject, edge_app.data, key)
    assert busy.status_code == 409, busy.text
    assert busy.headers["content-type"] == "application/problem+json"
    assert "in flight" in busy.json()["detail"]
    assert busy.headers["Retry-After"] == "1"
    arguments = {"subject": edge_app.subject, "data": edge_app.data, "idempotency_key": key}
    answer = await call_tool(edge_app, arguments)
    assert answer["isError"] is True
    assert "409: a request with this Idempotency-Key is in flight" in answer["content"][0]["text"]
    assert await edge_app.last_seq() == before

    result = b'{"id":"' + key.encode() + b'","stream":"' + edge_app.stream.encode() + b'","seq":7}'
    assert await records.finish(claim, result)
    done = await post(edge_app, edge_app.subject, edge_app.data, key)
    assert (done.status_code, done.content) == (201, result)
    assert await edge_app.last_seq() == before


# -- a request abandoned mid-flight --------------------------------------------------------


@pytest.mark.parametrize("landed", [False, True], ids=["crashed before publishing", "after"])
async def test_an_abandoned_request_is_taken_over_and_stores_once(shop: Edge, landed: bool) -> None:
    """A claim a minute old (its edge died) is taken over by the next request with the key;
    what the dead one stored is found, even past JetStream's window, not stored again."""
    key, subject = _key(), "orders.o9.placed"
    a_minute_ago = IdempotencyRecords(shop.bus, clock=lambda: time.time() - 60)
    assert isinstance(
        await a_minute_ago.begin(key, event_request(subject, {"total": 5}, None)), Claim
    )
    if landed:
        stored = await shop.bus.publish(OrderPlaced(total=5), "o9", event_id=key)
        await outlive_the_window(shop.bus)

    taken = await post(shop, subject, {"total": 5}, key)
    assert taken.status_code == 201, taken.text
    assert taken.json()["id"] == key
    if landed:
        assert taken.json()["seq"] == stored.seq
    on_subject = await shop.bus.read("ORDERS", 1, 100, subject)
    assert [m.headers["Nats-Msg-Id"] for m in on_subject] == [key]
    again = await post(shop, subject, {"total": 5}, key)
    assert (again.content, again.headers["Idempotent-Replayed"]) == (taken.content, "true")


@pytest.mark.parametrize("landed", [False, True], ids=["crashed before publishing", "after"])
async def test_an_abandoned_batch_is_taken_over_and_stores_once(shop: Edge, landed: bool) -> None:
    key = _key()
    body = {"domain": "orders", "id": "o8", "events": [{"event": "placed", "data": {"total": 3}}, {"event": "shipped", "data": {"carrier": "x"}}]}  # fmt: skip
    batch = msgspec.convert(body, BatchRequest)
    a_minute_ago = IdempotencyRecords(shop.bus, clock=lambda: time.time() - 60)
    assert isinstance(await a_minute_ago.begin(key, batch_request(batch)), Claim)
    if landed:
        await EventStore(shop.bus).append(
            "orders",
            "o8",
            [OrderPlaced(total=3), OrderShipped(carrier="x")],
            event_ids=[f"{key}.1", f"{key}.2"],
        )
        await outlive_the_window(shop.bus)

    headers = {**WRITE, "Idempotency-Key": key}
    taken = await shop.client.post("/api/v1/events:batch", json=body, headers=headers)
    assert taken.status_code == 201, taken.text
    assert [e["id"] for e in taken.json()["events"]] == [f"{key}.1", f"{key}.2"]
    on_aggregate = await shop.bus.read("ORDERS", 1, 100, "orders.o8.*")
    assert [m.headers["Nats-Msg-Id"] for m in on_aggregate] == [f"{key}.1", f"{key}.2"]
    assert taken.json()["version"] == on_aggregate[-1].seq


async def test_only_one_request_takes_an_abandoned_claim_over(bus: Bus) -> None:
    key = _key()
    stale = IdempotencyRecords(bus, clock=lambda: time.time() - 60)
    assert isinstance(await stale.begin(key, "request"), Claim)
    contenders = [IdempotencyRecords(bus) for _ in range(5)]
    outcomes = await asyncio.gather(*(r.begin(key, "request") for r in contenders))
    claims = [o for o in outcomes if isinstance(o, Claim)]
    assert len(claims) == 1
    assert claims[0].takeover
    assert all(isinstance(o, InFlight) for o in outcomes if o is not claims[0])
    assert not await stale.finish(  # the abandoned claimer cannot overwrite its taker's
        Claim(key, 1, "request"), b"late"
    )
    assert await contenders[0].finish(claims[0], b"result")
    assert await contenders[1].begin(key, "request") == Replay(b"result")


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "a b", "a.b", "tasks.*", "a>", "a\tb", "x" * 129, "x" * 10_000, "ключ", "a\nb", "\x00"],
    ids=["empty", "space", "dot", "wildcard", "gt", "tab", "129", "10k", "utf8", "nl", "nul"],
)
async def test_bad_keys_are_refused_and_nothing_is_stored(edge_app: Edge, key: str) -> None:
    headers = [*WRITE.items(), ("Content-Type", "application/json")]
    headers.append((b"Idempotency-Key", key.encode()))  # type: ignore[arg-type] # (as sent)
    subject, data = edge_app.subject, json.dumps(edge_app.data).encode()
    domain, aggregate, name = subject.split(".")
    batch = {"domain": domain, "id": aggregate, "events": [{"event": name, "data": edge_app.data}]}
    http = (
        ()
        if key in ("a\nb", "\x00")
        else (  # (control characters: MCP only)
            (f"/api/v1/events/{subject}", data),
            ("/api/v1/events:batch", json.dumps(batch).encode()),
        )
    )
    for path, body in http:
        request = edge_app.client.build_request("POST", path, content=body, headers=headers)
        response = await edge_app.client.send(request)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "Idempotency-Key" in response.json()["detail"]
    answer = await call_tool(
        edge_app, {"subject": subject, "data": edge_app.data, "idempotency_key": key}
    )
    assert answer["isError"] is True
    assert "idempotency_key" in answer["content"][0]["text"]
    assert await edge_app.last_seq() == 0
    assert not await edge_app.bucket_exists()


async def test_publishing_without_a_key_never_touches_the_records(shop: Edge) -> None:
    assert (await post(shop, shop.subject, shop.data, None)).status_code == 201
    batch = {"domain": "payments", "id": "p1", "events": [{"event": "taken", "data": {"amount": 1}}]}  # fmt: skip
    assert (
        await shop.client.post("/api/v1/events:batch", json=batch, headers=WRITE)
    ).status_code == 201
    answer = await call_tool(shop, {"subject": shop.other_subject, "data": shop.other_data})
    assert answer["isError"] is False
    assert not await shop.bucket_exists()
    read = await shop.client.get("/api/v1/streams/PAYMENTS", headers=READ)
    assert read.json()["messages"] == 2


async def test_a_refused_request_keeps_no_record(shop: Edge) -> None:
    """A version conflict stored nothing: the key is free for the same (or another) request."""
    key, records = _key(), IdempotencyRecords(shop.bus)
    for _ in range(2):
        conflict = await post(shop, "orders.o5.placed", {"total": 1}, key, **{"If-Match": "5"})
        assert conflict.status_code == 409
        assert conflict.json()["title"] == "Version conflict"
        assert await records.get(key) is None
    fixed = await post(shop, "orders.o5.placed", {"total": 1}, key, **{"If-Match": "0"})
    assert fixed.status_code == 201


# -- the records themselves ----------------------------------------------------------------


async def test_records_live_for_their_ttl_and_an_existing_bucket_takes_a_new_one(
    bus: Bus,
) -> None:
    records, key = IdempotencyRecords(bus, ttl=3600), _key()
    claim = await records.begin(key, "request")
    assert isinstance(claim, Claim)
    assert await records.finish(claim, b"result")
    short = IdempotencyRecords(bus, ttl=1.0)  # the bucket exists, with an hour
    assert await short.begin(key, "request") == Replay(b"result")
    assert (await bus.js.stream_info(STREAM)).config.max_age == 1.0
    deadline = time.monotonic() + 15
    while await short.get(key) is not None:
        assert time.monotonic() < deadline, "the record outlived its TTL"
        await asyncio.sleep(0.1)
    assert isinstance(await short.begin(key, "another request"), Claim)


def test_records_refuse_a_ttl_that_is_not_positive() -> None:
    with pytest.raises(ConfigError, match="TTL"):
        IdempotencyRecords(Bus(), ttl=0)


@pytest.mark.parametrize(
    ("value", "error"),
    [("0", "greater than or equal to 60"), ("-1", "greater"), ("abc", "number"), ("nan", "")],
)
def test_the_ttl_setting_is_checked(
    monkeypatch: pytest.MonkeyPatch, value: str, error: str
) -> None:
    monkeypatch.setenv("BUS_IDEMPOTENCY_TTL", value)
    with pytest.raises(ConfigError, match=f"BUS_IDEMPOTENCY_TTL: .*{error}"):
        Settings.from_env()


def test_the_ttl_setting_reaches_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().edge_options()["idempotency_ttl"] == 86400.0
    monkeypatch.setenv("BUS_IDEMPOTENCY_TTL", "3600")
    assert Settings.from_env().edge_options()["idempotency_ttl"] == 3600.0


@contextlib.asynccontextmanager
async def one_bus_per_node(cluster: EmbeddedCluster) -> AsyncIterator[list[Bus]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Bus(url, replicas=3)) for url in cluster.urls]


async def test_records_are_never_stale_on_a_replicated_bucket(
    nats_cluster: EmbeddedCluster,
) -> None:
    """R3: a key claimed or finished through one node is seen at once through the others."""
    async with one_bus_per_node(nats_cluster) as buses:
        records = [IdempotencyRecords(b) for b in buses]
        for n in range(30):
            key, first, other = _key(), records[n % 3], records[(n + 1) % 3]
            claim = await first.begin(key, "request")
            assert isinstance(claim, Claim)
            assert isinstance(await other.begin(key, "request"), InFlight)
            assert await first.finish(claim, b"done")
            assert await records[(n + 2) % 3].begin(key, "request") == Replay(b"done")
        assert (await buses[0].js.stream_info(STREAM)).config.num_replicas == 3
