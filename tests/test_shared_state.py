"""Shared state (`bus.bucket`): compare-and-set on JetStream KV against a real nats-server,
and on a 3-node cluster with an R3 bucket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bus import (
    App,
    Bucket,
    BucketSpec,
    Bus,
    ConcurrencyError,
    ConfigError,
    DecodeError,
    EmbeddedCluster,
    InvalidSubject,
    KeyEntry,
    KeyExists,
    KeyNotFound,
    RevisionMismatch,
)
from bus.testing import run_app
from services.demo import app as demo
from services.runtime.settings import Settings


class Limits(msgspec.Struct):
    rate: int
    burst: int = 0


SPECS = [BucketSpec("settings", history=10), BucketSpec("limits", value_type=Limits)]


@pytest.fixture
async def shared(nats_url: str) -> AsyncIterator[Bus]:
    async with Bus(nats_url, buckets=SPECS, drain_timeout=2.0) as bus:
        yield bus


async def test_get_put_create_update_delete_with_revisions(shared: Bus) -> None:
    settings = shared.bucket("settings")
    assert await settings.get("theme") is None
    first = await settings.create("theme", {"dark": True})
    with pytest.raises(KeyExists) as exists:
        await settings.create("theme", {"dark": False})
    assert exists.value.current == first
    found = await settings.get("theme")
    assert found is not None
    assert (found.value, found.revision, found.operation) == ({"dark": True}, first, "put")

    second = await settings.update("theme", {"dark": False}, revision=first)
    assert second > first
    with pytest.raises(RevisionMismatch) as stale:
        await settings.update("theme", {"dark": True}, revision=first)
    assert (stale.value.expected, stale.value.current) == (first, second)
    assert isinstance(stale.value, ConcurrencyError)
    assert str(second) in str(stale.value)

    third = await settings.put("theme", {"dark": None})
    with pytest.raises(RevisionMismatch):
        await settings.delete("theme", revision=second)
    gone = await settings.delete("theme", revision=third)
    assert await settings.get("theme") is None
    with pytest.raises(KeyNotFound):
        await settings.delete("theme")
    with pytest.raises(RevisionMismatch) as absent:
        await settings.update("theme", {}, revision=third)
    assert absent.value.current == 0

    history = await settings.history("theme")
    assert [(e.revision, e.operation) for e in history] == [
        (first, "put"),
        (second, "put"),
        (third, "put"),
        (gone, "delete"),
    ]
    assert history[0].value == {"dark": True}
    assert history[-1].value is None
    reborn = await settings.create("theme", {"dark": True})  # over the deletion marker
    assert reborn > gone


async def test_unconditional_delete_and_nothing_written_on_refusals(shared: Bus) -> None:
    settings = shared.bucket("settings")
    revision = await settings.put("a.b", 1)
    with pytest.raises(KeyExists):
        await settings.create("a.b", 2)
    with pytest.raises(RevisionMismatch):
        await settings.update("a.b", 3, revision=revision + 100)
    assert [e.value for e in await settings.history("a.b")] == [1]
    await settings.delete("a.b")
    assert [e.operation for e in await settings.history("a.b")] == ["put", "delete"]


async def test_typed_values(shared: Bus) -> None:
    limits: Bucket[Limits] = shared.bucket("limits")
    await limits.put("api", Limits(rate=10))
    found = await limits.get("api")
    assert found is not None
    assert found.value == Limits(rate=10, burst=0)
    assert limits.convert({"rate": 5}) == Limits(5)
    with pytest.raises(DecodeError):
        limits.convert({"rate": "fast"})
    await shared.bucket("settings").put("raw", "not limits")
    # a value written as another shape cannot pass for a Limits
    await limits.put("odd", "text")  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        await limits.get("odd")


@pytest.mark.parametrize(
    "key", ["", "a b", "a..b", ".a", "a.", "a/b", "a*", "a.>", "ü", "x" * 257, "a\r\nb"]
)
async def test_bad_keys_are_refused_before_anything_is_sent(shared: Bus, key: str) -> None:
    settings = shared.bucket("settings")
    for call in (
        settings.get(key),
        settings.put(key, 1),
        settings.create(key, 1),
        settings.update(key, 1, revision=1),
        settings.delete(key),
        settings.history(key),
        settings.modify(key, lambda v: 1),
    ):
        with pytest.raises(InvalidSubject):
            await call
    assert (await shared.streams.info("KV_settings")).messages == 0


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"name": "bad name"}, "letters"),
        ({"name": "bus_components"}, "bus's"),
        ({"name": "proj_task_1"}, "bus's"),
        ({"name": "ok", "history": 0}, "history"),
        ({"name": "ok", "history": 65}, "history"),
        ({"name": "ok", "ttl": 0}, "ttl"),
    ],
)
def test_bad_bucket_specs(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        BucketSpec(**spec)


async def test_only_declared_buckets_are_reachable(shared: Bus) -> None:
    for name in ("bus_idempotency", "nope", "settings "):
        with pytest.raises(ConfigError, match="declared"):
            shared.bucket(name)


async def test_keys_pages_by_key_with_a_prefix(shared: Bus) -> None:
    settings = shared.bucket("settings")
    for n in range(25):
        await settings.put(f"user.{n:02}", n)
    await settings.put("other", "x")
    await settings.delete("user.03")
    seen: list[str] = []
    cursor = None
    while True:
        page = await settings.keys("user.", limit=10, cursor=cursor)
        seen += [e.key for e in page.items]
        assert all(e.value == int(e.key[5:]) for e in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"user.{n:02}" for n in range(25) if n != 3]
    everything = await settings.keys()
    assert [e.key for e in everything.items][-1] == "user.24"
    assert everything.next_cursor is None
    assert [e.key for e in (await settings.keys("user.1")).items] == [
        f"user.{n}" for n in range(10, 20)
    ]
    for bad in ({"limit": 0}, {"limit": 1001}, {"prefix": "a b"}, {"cursor": "a..b"}):
        with pytest.raises(ConfigError):
            await settings.keys(**bad)


async def take(watch: Any, count: int) -> list[KeyEntry[Any]]:
    out: list[KeyEntry[Any]] = []
    async with asyncio.timeout(10), contextlib.aclosing(watch) as changes:
        async for entry in changes:
            out.append(entry)
            if len(out) == count:
                return out
    return out


async def test_watch_delivers_every_change_in_order(shared: Bus) -> None:
    settings = shared.bucket("settings")
    start = await settings.put("room.0", "before")  # not seen: the watch starts after it
    watching = asyncio.create_task(take(settings.watch("room.>", after_revision=start), 60))
    revisions = []
    for n in range(30):
        revisions.append(await settings.put(f"room.{n % 3}", n))
        await settings.put(f"elsewhere.{n}", n)  # not matching
        if n % 10 == 9:
            revisions.append(await settings.delete(f"room.{n % 3}"))
    revisions += [await settings.put(f"room.l{n % 3}", -1) for n in range(27)]
    got = await watching
    assert [e.revision for e in got] == revisions
    assert [e.value for e in got[:3]] == [0, 1, 2]
    assert got[9].value == 9
    assert got[10].operation == "delete"
    assert got[10].value is None
    # resuming after a revision gives the rest, in order
    again = await take(settings.watch("room.>", after_revision=got[40].revision), 19)
    assert [e.revision for e in again] == [e.revision for e in got[41:]]
    for bad in ("room.>.x", "room..x", "", "room x"):
        with pytest.raises(InvalidSubject):
            settings.watch(bad)  # refused at once, before any change is awaited
    for bad_revision in (-1, 2**63):
        with pytest.raises(ConfigError):
            settings.watch(after_revision=bad_revision)


async def test_watch_starts_from_now_by_default(shared: Bus) -> None:
    settings = shared.bucket("settings")
    await settings.put("room.old", 0)
    first = asyncio.create_task(take(settings.watch("room.*"), 1))
    async with asyncio.timeout(10):
        while not first.done():
            await settings.put("room.new", 1)
            await asyncio.sleep(0.01)
    assert [(e.key, e.value) for e in first.result()] == [("room.new", 1)]


async def increments(bucket: Bucket[Any], key: str, tasks: int, each: int) -> None:
    async def one() -> None:
        for _ in range(each):
            await bucket.modify(key, lambda n: (n or 0) + 1)

    await asyncio.gather(*(one() for _ in range(tasks)))


async def test_racing_modify_loses_no_increment(shared: Bus) -> None:
    settings = shared.bucket("settings")
    await increments(settings, "counter", tasks=20, each=5)
    found = await settings.get("counter")
    assert found is not None
    assert found.value == 100


async def test_racing_modify_on_an_r3_bucket(nats_cluster: EmbeddedCluster) -> None:
    spec = BucketSpec("race_r3")
    async with (
        Bus(nats_cluster.urls, buckets=[spec], replicas=3, drain_timeout=2.0) as bus,
        Bus(nats_cluster.urls[::-1], buckets=[spec], replicas=3, drain_timeout=2.0) as other,
    ):
        assert (await bus.streams.info("KV_race_r3")).replicas == 3
        await asyncio.gather(
            increments(bus.bucket("race_r3"), "n", tasks=10, each=3),
            increments(other.bucket("race_r3"), "n", tasks=10, each=3),
        )
        found = await other.bucket("race_r3").get("n")
        assert found is not None
        assert found.value == 60


async def test_an_apps_buckets_reach_every_bus_it_runs_on(nats_url: str) -> None:
    """`bus up`, the worker and the projector take the app's buckets with its streams; the
    test harness and the edge too: the demo's `settings` is one bucket for all of them."""
    assert Settings().bus_options(demo)["buckets"] == [demo.buckets["settings"]]
    async with run_app(demo, nats_url, edge=True) as shop:
        revision = await shop.bus.bucket("settings").put("mode", "calm")
        got = await shop.http.get("/api/v1/kv/settings/mode")
        assert (got.json(), got.headers["etag"]) == ("calm", f'"{revision}"')
    bare = App("bare")
    with pytest.raises(ConfigError, match="known: none"):
        Bus(nats_url, buckets=bare.buckets.values()).bucket("settings")


async def test_the_kv_bench_runs_and_gives_its_verdicts() -> None:
    """`services.bench.kv` (the lead wires it into `bus bench --scenario patterns`): one run,
    its two figures; no timing is asserted."""
    from services.bench.kv import run_kv_bench

    verdicts = await run_kv_bench(1, as_json=True)
    assert [v.measure for v in verdicts] == ["update, compare-and-set", "read-modify-write"]
    assert verdicts[0].target == ">= 0.95x"


async def test_writes_are_traced_as_publishes(nats_url: str) -> None:
    """A write is a PRODUCER span named by the bucket, never the key; its context is stored
    with the value (a watcher can continue the trace)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Bus(nats_url, buckets=SPECS, tracer_provider=provider) as bus:
        settings = bus.bucket("settings")
        revision = await settings.put("secret-key-name", 1)
        with pytest.raises(RevisionMismatch):
            await settings.update("secret-key-name", 2, revision=revision + 5)
        stored = (await bus.read("KV_settings", revision, 1))[0]
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["publish $KV.settings.{key}"] * 2
    assert spans[0].kind == SpanKind.PRODUCER
    assert spans[0].attributes is not None
    assert spans[0].attributes["messaging.nats.sequence"] == revision
    assert spans[1].status.status_code == StatusCode.ERROR
    assert all("secret-key-name" not in s.name for s in spans)
    trace_id = format(spans[0].context.trace_id, "032x")
    assert trace_id in stored.headers["traceparent"]
