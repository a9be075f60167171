"""Publishing, streams as code and request/reply against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest

from bus import (
    Bus,
    ConcurrencyError,
    ConfigError,
    EmbeddedServer,
    InvalidSubject,
    NoResponders,
    NoStreamForSubject,
    OutboundBufferFull,
    PublishError,
    PublishTimeout,
    RemoteError,
    RequestTimeout,
    StreamConflict,
    StreamError,
    StreamNotFound,
    StreamSpec,
)
from bus._deadlines import Deadlines
from bus._publish import Publisher

from .domain import JOBS, JobCreated, JobDone, eventually


@pytest.fixture
async def jobs(nats_url: str):  # type: ignore[no-untyped-def]
    async with Bus(nats_url, streams=[JOBS]) as bus:
        bus.registry.register(JobCreated)
        bus.registry.register(JobDone)
        yield bus


@pytest.mark.parametrize("content_type", ["json", "msgpack"])
async def test_round_trip(nats_url: str, content_type: str) -> None:
    async with Bus(nats_url, streams=[JOBS], content_type=content_type) as bus:  # type: ignore[arg-type]
        bus.registry.register(JobCreated)
        sent = JobCreated(title="round ✓", fail_times=3)
        result = await bus.publish(sent, "r1")
        assert (result.stream, result.seq, result.subject) == ("JOBS", 1, "jobs.r1.created")
        [stored] = await bus.read("JOBS", 1, 10)
        envelope = bus.open(stored)
        assert envelope.event == sent
        assert envelope.id == result.event_id
        assert stored.headers["Content-Type"] == f"application/{content_type}"


async def test_same_event_id_is_stored_once(jobs: Bus) -> None:
    first = await jobs.publish(JobCreated(title="once"), "d1")
    again = await jobs.publish(JobCreated(title="once"), "d1", event_id=first.event_id)
    assert (again.seq, again.duplicate, first.duplicate) == (first.seq, True, False)
    assert (await jobs.streams.info("JOBS")).messages == 1


async def test_publish_many_keeps_order_and_can_return_errors(jobs: Bus) -> None:
    results = await jobs.publish_many((JobCreated(title=str(i)), f"m{i}") for i in range(500))
    assert [r.seq for r in results] == list(range(1, 501))
    mixed = await jobs.publish_many([(JobDone(), "m0"), (JobDone(), "m1")], return_exceptions=True)
    assert [r.seq for r in mixed] == [501, 502]
    stale = jobs.publisher.prepare(JobDone(), "m0", expected_version=1)
    fresh = jobs.publisher.prepare(JobDone(), "m1", expected_version=502)
    out = await jobs.publisher.send_many([stale, fresh], return_exceptions=True)
    assert isinstance(out[0], ConcurrencyError)
    assert out[1].seq == 503  # type: ignore[union-attr]
    with pytest.raises(ConcurrencyError):
        await jobs.publisher.send_many(
            [jobs.publisher.prepare(JobDone(), "m0", expected_version=1)]
        )


async def test_expected_version(jobs: Bus) -> None:
    created = await jobs.publish(JobCreated(title="v"), "agg", expected_version=0)
    with pytest.raises(ConcurrencyError) as new_again:
        await jobs.publish(JobCreated(title="v"), "agg", expected_version=0)
    assert (new_again.value.expected, new_again.value.actual) == (0, created.seq)
    await jobs.publish(JobCreated(title="other aggregate"), "other")
    done = await jobs.publish(JobDone(), "agg", expected_version=created.seq)
    with pytest.raises(ConcurrencyError) as stale:
        await jobs.publish(JobDone(), "agg", expected_version=created.seq)
    assert (stale.value.expected, stale.value.actual) == (created.seq, done.seq)
    with pytest.raises(ValueError, match=">= 0"):
        await jobs.publish(JobDone(), "agg", expected_version=-1)


@pytest.mark.parametrize("aggregate_id", ["a b", "a.b", "*", ">", "", "tab\t", "ünï"])
async def test_invalid_ids_are_refused_before_anything_is_sent(
    jobs: Bus, aggregate_id: str
) -> None:
    with pytest.raises(InvalidSubject):
        await jobs.publish(JobCreated(title="x"), aggregate_id)
    assert (await jobs.streams.info("JOBS")).messages == 0


async def test_wrong_inputs(jobs: Bus) -> None:
    with pytest.raises(TypeError, match="expected an Event"):
        await jobs.publish({"title": "x"}, "a1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="line breaks"):
        await jobs.publish(JobDone(), "a1", correlation_id="x\r\nNats-Expected-Stream: X")
    assert (await jobs.streams.info("JOBS")).messages == 0


async def test_no_stream_for_the_subject(bus: Bus) -> None:
    with pytest.raises(NoStreamForSubject):
        await bus.publish(JobCreated(title="nowhere"), "n1")
    with pytest.raises(NoStreamForSubject):
        await bus.publish_many([(JobCreated(title="nowhere"), "n1")])


async def test_publish_to_a_stopped_server_times_out(nats_server: EmbeddedServer) -> None:
    async with Bus(nats_server.url, streams=[JOBS], publish_timeout=0.3) as bus:
        nats_server.stop()
        with pytest.raises(PublishTimeout) as timed_out:
            await bus.publish(JobCreated(title="lost?"), "t1")
        assert isinstance(timed_out.value, TimeoutError)
        nats_server.start()  # so the bus drains instead of waiting out its bound


async def test_an_unreachable_server_bounds_what_waits_to_be_sent(
    nats_server: EmbeddedServer,
) -> None:
    async with Bus(nats_server.url, streams=[JOBS], publish_timeout=0.5) as bus:
        nats_server.stop()
        await eventually(lambda: not bus.connected)
        big = [(JobCreated(title="x" * 100_000), f"b{i}") for i in range(40)]  # ~4 MB
        with pytest.raises(OutboundBufferFull):
            await bus.publish_many(big)
        assert bus.nc.pending_data_size <= bus.nc._max_pending_size
        nats_server.start()
        await eventually(lambda: bus.connected)
        done = await bus.publish(JobCreated(title="after"), "a1", timeout=5)
        assert done.stream == "JOBS"


async def test_publish_many_refuses_a_bad_pair_before_sending_and_a_huge_event_alone(
    jobs: Bus,
) -> None:
    """What cannot be an event at all stops the call before anything is sent, however far into
    the batch it is (the rest of an event is made as the send loop reaches it); an event too
    large for the server fails alone."""
    good = [(JobCreated(title=str(i)), f"g{i}") for i in range(600)]
    with pytest.raises(InvalidSubject):
        await jobs.publish_many([*good, (JobCreated(title="x"), "bad id")])
    with pytest.raises(TypeError):
        await jobs.publish_many([*good, ({"title": "x"}, "a1")])  # type: ignore[list-item]
    assert (await jobs.streams.info("JOBS")).messages == 0
    huge = (JobCreated(title="x" * 2_000_000), "h1")  # past the server's 1 MiB max_payload
    results = await jobs.publish_many([good[0], huge, good[1]], return_exceptions=True)
    assert [r.seq for r in (results[0], results[2])] == [1, 2]
    assert isinstance(results[1], PublishError)
    assert "maximum payload exceeded" in str(results[1])
    with pytest.raises(PublishError, match="maximum payload exceeded"):
        await jobs.publish(*huge)
    assert (await jobs.streams.info("JOBS")).messages == 2


async def test_unacknowledged_publishes_are_bounded_by_the_window(
    nats_server: EmbeddedServer,
) -> None:
    """A server that stops answering holds at most `max_pending` publishes in flight; the
    rest wait for acks (not memory), and everything lands once it answers again."""
    async with Bus(nats_server.url, streams=[JOBS]) as bus:
        publisher = Publisher(bus.nc, bus.codec, bus.telemetry, timeout=20, max_pending=50)
        outs = [publisher.prepare(JobCreated(title=str(i)), f"w{i}") for i in range(500)]
        nats_server.pause()
        try:
            sending = asyncio.ensure_future(publisher.send_many(outs))
            await asyncio.sleep(0.3)
            assert len(publisher._waiting) == 50
        finally:
            nats_server.resume()
        results = await sending
        assert [r.seq for r in results] == list(range(1, 501))
        assert len(publisher._waiting) == 0


async def test_a_publish_many_cut_short_by_its_timeout_reports_every_event(
    nats_server: EmbeddedServer,
) -> None:
    """Events a timed-out call never got to send are reported as timed out too, in order."""
    async with Bus(nats_server.url, streams=[JOBS]) as bus:
        publisher = Publisher(bus.nc, bus.codec, bus.telemetry, timeout=0.5, max_pending=50)
        pairs = [(JobCreated(title=str(i)), f"t{i}") for i in range(600)]
        nats_server.pause()
        try:
            results = await publisher.publish_many(pairs, None, return_exceptions=True)
        finally:
            nats_server.resume()
        assert len(results) == 600
        assert all(isinstance(r, PublishTimeout) for r in results)
        assert [r.subject for r in results] == [f"jobs.t{i}.created" for i in range(600)]  # type: ignore[union-attr]
        assert len(publisher._waiting) == 0


async def test_streams_ensure_update_verify_and_conflicts(nats_url: str) -> None:
    spec = StreamSpec(name="ORDERS", subjects=("orders.>",), max_age=3600)
    async with Bus(nats_url, streams=[spec]) as bus:
        first = await bus.streams.ensure(spec)
        assert await bus.streams.ensure(spec) == first  # idempotent
        names = [s.name for s in await bus.streams.list()]
        assert names == ["DLQ_ORDERS", "ORDERS"]
        wider = StreamSpec(name="ORDERS", subjects=("orders.>", "refunds.>"), max_age=600)
        assert (await bus.streams.ensure(wider)).subjects == ["orders.>", "refunds.>"]
        memory = StreamSpec(name="ORDERS", subjects=("orders.>",), storage="memory")
        with pytest.raises(StreamConflict) as conflict:
            await bus.streams.ensure(memory)
        assert conflict.value.field == "storage"
        assert "cannot change it in place" in str(conflict.value)
        overlap = StreamSpec(name="OTHER", subjects=("orders.*.x",))
        with pytest.raises(StreamError, match="overlap"):
            await bus.streams.ensure(overlap)
        with pytest.raises(StreamNotFound):
            await bus.streams.info("NOPE")

    async with Bus(nats_url, streams=[wider], manage_streams=False) as checked:
        assert checked.connected
    missing = StreamSpec(name="MISSING", subjects=("missing.>",))
    with pytest.raises(StreamNotFound):
        await Bus.connect(nats_url, streams=[missing], manage_streams=False)
    narrower = StreamSpec(name="ORDERS", subjects=("orders.>", "extra.>"))
    with pytest.raises(StreamConflict, match="subjects"):
        await Bus.connect(nats_url, streams=[narrower], manage_streams=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "has space", "subjects": ("a.>",)}, "stream name"),
        ({"name": "A", "subjects": "a.>"}, "not a string"),
        ({"name": "A", "subjects": ()}, "at least one subject"),
        ({"name": "A", "subjects": ("a.>",), "replicas": 2}, "replicas"),
        ({"name": "A", "subjects": ("a b",)}, "invalid subject"),
        ({"name": "A", "subjects": ("a.>",), "max_age": 60}, "cannot exceed max_age"),
    ],
)
def test_invalid_stream_specs(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StreamSpec(**options)


class GetJob(msgspec.Struct):
    id: str


class JobView(msgspec.Struct):
    id: str
    title: str


async def get_job(req: GetJob) -> JobView:
    if req.id == "boom":
        raise KeyError(req.id)
    if req.id == "slow":
        await asyncio.sleep(1)
    return JobView(id=req.id, title=f"job {req.id}")


async def test_request_reply(bus: Bus) -> None:
    await bus.serve("jobs.get", get_job, service="jobs", version="1.2.3")
    assert await bus.request("jobs.get", GetJob(id="7"), JobView) == JobView("7", "job 7")
    with pytest.raises(RemoteError) as failed:
        await bus.request("jobs.get", GetJob(id="boom"), JobView)
    assert failed.value.code == 500
    with pytest.raises(RequestTimeout) as slow:
        await bus.request("jobs.get", GetJob(id="slow"), JobView, timeout=0.2)
    assert isinstance(slow.value, TimeoutError)
    raw = await bus.nc.request("jobs.get", b'{"id": 5}', timeout=1)
    assert raw.headers is not None
    assert raw.headers["Nats-Service-Error-Code"] == "400"
    with pytest.raises(NoResponders):
        await bus.request("jobs.nobody", GetJob(id="1"), JobView, timeout=0.5)
    with pytest.raises(InvalidSubject):
        await bus.request("jobs.*", GetJob(id="1"), JobView)
    ping = await bus.nc.request("$SRV.PING.jobs", b"", timeout=1)
    assert msgspec.json.decode(ping.data)["version"] == "1.2.3"


async def test_tail_follows_from_a_sequence(jobs: Bus) -> None:
    await jobs.publish_many((JobCreated(title=str(i)), f"t{i}") for i in range(3))
    seen: list[int] = []
    async with asyncio.timeout(10):
        async for message in jobs.tail("jobs.>", from_seq=2):
            seen.append(message.seq)
            if message.seq == 2:
                await jobs.publish(JobDone(), "t9")
            if len(seen) == 3:
                break
    assert seen == [2, 3, 4]


async def test_a_slow_tail_reader_misses_nothing_and_holds_one_page(jobs: Bus) -> None:
    await jobs.publish_many((JobCreated(title=str(i)), f"s{i}") for i in range(600))
    seqs: list[int] = []
    async with asyncio.timeout(30), contextlib.aclosing(jobs.tail("jobs.>", 1)) as messages:
        async for message in messages:
            seqs.append(message.seq)
            if len(seqs) % 100 == 0:
                await asyncio.sleep(0.2)  # the reader falls behind; nothing buffers for it
            if len(seqs) == 600:
                break
    assert seqs == list(range(1, 601))


async def test_deadlines_expire_each_wait_once_in_deadline_order() -> None:
    """One timer for many waits: each expires once, the earliest first, however they came
    (a later wait with an earlier deadline moves the timer up); one discarded never does."""
    deadlines = Deadlines()
    expired: list[str] = []
    done, done_too = asyncio.Event(), asyncio.Event()

    class Wait:
        def __init__(self, name: str) -> None:
            self.name = name

        def expire(self) -> None:
            expired.append(self.name)
            if len(expired) == 4:
                done.set()
            if self.name == "last":
                done_too.set()

    waits = {name: Wait(name) for name in ("late", "soon", "now", "ended", "mid", "last")}
    for name, seconds in [("late", 0.2), ("soon", 0.05), ("now", 0), ("ended", 0.25),
                          ("mid", 0.1), ("last", 0.3)]:  # fmt: skip
        deadlines.add(waits[name], seconds)
    deadlines.discard(waits["ended"])  # it ended before its deadline: never expires
    await asyncio.wait_for(done.wait(), 10)
    assert expired == ["now", "soon", "mid", "late"]
    await asyncio.wait_for(done_too.wait(), 10)
    assert expired == ["now", "soon", "mid", "late", "last"]  # and each once
    assert deadlines._timer is None  # nothing left to expire
