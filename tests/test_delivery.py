"""Handlers on durable pull consumers: retries, dead letters, bounds, batches, keep-alive."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest

from bus import Backoff, Bus, ConfigError, Envelope, PublishError, Router, current_bus

from .domain import JOBS, JobCreated, JobDone, eventually

FAST = Backoff(base=0.2, factor=2.0, jitter=0.0)


@pytest.fixture
async def jobs(nats_url: str):  # type: ignore[no-untyped-def]
    async with Bus(nats_url, streams=[JOBS], drain_timeout=3.0) as bus:
        yield bus


async def test_failing_twice_then_succeeding_is_delivered_three_times_with_growing_delay(
    jobs: Bus,
) -> None:
    seen: list[tuple[int, float]] = []

    async def handle(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        seen.append((envelope.attempt, time.monotonic()))
        if envelope.attempt <= 2:
            raise RuntimeError("not yet")

    await jobs.consume(handle, durable="retry", backoff=FAST)
    await jobs.publish(JobCreated(title="flaky"), "j1")
    await eventually(lambda: len(seen) == 3)
    await asyncio.sleep(0.5)  # and nothing more arrives after the success
    assert [attempt for attempt, _ in seen] == [1, 2, 3]
    first_gap, second_gap = seen[1][1] - seen[0][1], seen[2][1] - seen[1][1]
    assert second_gap > first_gap
    assert await jobs.dead_letters("JOBS") == []


@pytest.mark.parametrize("max_deliver", [3, 5])
async def test_always_failing_ends_in_one_dead_letter_after_max_deliver(
    jobs: Bus, max_deliver: int
) -> None:
    attempts: list[int] = []

    async def handle(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        attempts.append(envelope.attempt)
        raise ValueError(f"broken job {event.title}")

    await jobs.consume(
        handle, durable="doomed", max_deliver=max_deliver, backoff=Backoff(base=0.02, jitter=0)
    )
    published = await jobs.publish(JobCreated(title="x"), "j1")
    await eventually(lambda: len(attempts) >= max_deliver)
    letters: list = []

    async def dead_lettered() -> bool:
        letters[:] = await jobs.dead_letters("JOBS")
        return bool(letters)

    for _ in range(200):
        if await dead_lettered():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert attempts == list(range(1, max_deliver + 1))
    assert len(await jobs.dead_letters("JOBS")) == 1
    letter = letters[0]
    assert letter.original_subject == "jobs.j1.created"
    assert letter.original_seq == published.seq
    assert letter.consumer == "doomed"
    assert letter.event_id == published.event_id
    assert f"failed {max_deliver} times" in letter.reason
    assert "ValueError: broken job x" in letter.reason
    info = await jobs.js.consumer_info("JOBS", "doomed")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)  # terminated, not pending


async def test_poison_messages_go_to_dead_letters_and_the_consumer_goes_on(jobs: Bus) -> None:
    handled: list[str] = []

    async def handle(event: JobCreated) -> None:
        handled.append(event.title)

    await jobs.consume(handle, durable="robust")
    # Raw nats-py publishes that no decoder can make sense of.
    await jobs.js.publish("jobs.g1.created", b"\xff\xfe not json at all")
    await jobs.js.publish("jobs.g2.created", b'{"title": 5}')  # wrong type
    await jobs.js.publish("jobs.g3.created", b"{}", headers={"Bus-Event-Type": "Nope"})
    await jobs.js.publish(
        "jobs.g4.created",
        b'{"title": "x"}',
        headers={"Bus-Event-Type": "JobCreated", "Bus-Event-Version": "9"},
    )
    await jobs.js.publish(
        "jobs.g5.created", b'{"title": "x"}', headers={"Content-Type": "text/csv"}
    )
    await jobs.js.publish("jobs.g6.created", b'{"title": "x"}', headers={"Bus-Event-Version": "x"})
    await jobs.publish(JobCreated(title="fine"), "ok")
    await eventually(lambda: handled == ["fine"])

    letters: list = []

    async def all_dead_lettered() -> bool:
        letters[:] = await jobs.dead_letters("JOBS")
        return len(letters) == 6

    for _ in range(200):
        if await all_dead_lettered():
            break
        await asyncio.sleep(0.05)
    by_subject = {d.original_subject: d.reason for d in letters}
    assert set(by_subject) == {f"jobs.g{i}.created" for i in range(1, 7)}
    assert all(reason.startswith("undecodable") for reason in by_subject.values())
    assert "unknown event type 'Nope'" in by_subject["jobs.g3.created"]
    assert "newer than this code knows" in by_subject["jobs.g4.created"]
    assert "unsupported content type" in by_subject["jobs.g5.created"]


async def test_concurrency_bounds_messages_in_flight(jobs: Bus) -> None:
    running = 0
    peak = 0
    done = 0

    async def slow(event: JobCreated) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.15)
        running -= 1
        done += 1

    await jobs.publish_many((JobCreated(title=str(i)), f"c{i}") for i in range(40))
    consumer = await jobs.consume(slow, durable="bounded", concurrency=4)
    ack_pending: list[int] = []
    held: list[int] = []
    while done < 40:
        info = await jobs.js.consumer_info("JOBS", "bounded")
        ack_pending.append(info.num_ack_pending)
        held.append(consumer.capacity)
        await asyncio.sleep(0.03)
    assert peak == 4
    # What the consumer may hold: its 4 slots, and once a job is timed the read-ahead of what
    # 4 handlers of 0.15 s get through in AHEAD_SECONDS (one message).
    assert 4 <= max(held) <= 5
    # The server may serve the next pull before it has processed the acks sent ahead of it,
    # so its count can briefly include the finished batch too: at most the slots more.
    assert 0 < max(ack_pending) <= max(held) + 4


async def test_fast_handlers_read_ahead_and_slow_ones_hold_only_what_they_can_start(
    jobs: Bus,
) -> None:
    """A handler that is quick gets its next messages before it asks (no round trip per
    pull); one that takes a while is not sent more than it can start soon, so other
    instances get the rest."""
    fast_done = 0

    async def fast(event: JobCreated) -> None:
        nonlocal fast_done
        fast_done += 1

    await jobs.publish_many((JobCreated(title=str(i)), f"f{i}") for i in range(300))
    quick = await jobs.consume(fast, durable="quick", concurrency=1)
    await eventually(lambda: fast_done == 300)
    assert 1 < quick.capacity <= 1 + 512

    async def slow(event: JobCreated) -> None:
        await asyncio.sleep(0.1)

    patient = await jobs.consume(slow, durable="patient", concurrency=2)
    ack_pending = []
    for _ in range(20):
        info = await jobs.js.consumer_info("JOBS", "patient")
        ack_pending.append(info.num_ack_pending)
        await asyncio.sleep(0.05)
    assert patient.capacity <= 3  # 2 slots + what 2 handlers of 0.1 s finish in 0.05 s
    assert 0 < max(ack_pending) <= 2 * patient.capacity  # (acks may trail the next pull)


async def test_messages_waiting_behind_a_slow_handler_are_kept_alive(jobs: Bus) -> None:
    """Messages read ahead wait their turn without being delivered again elsewhere."""
    handled: list[str] = []

    async def handle(event: JobCreated) -> None:
        handled.append(event.title)
        if event.title == "10":
            await asyncio.sleep(2.5)  # the rest wait behind it, well past ack_wait

    await jobs.publish_many((JobCreated(title=str(i)), f"k{i}") for i in range(40))
    await jobs.consume(handle, durable="queued", concurrency=1, ack_wait=1.0)
    await eventually(lambda: len(handled) == 40, timeout=10)
    await asyncio.sleep(1.5)
    assert sorted(handled, key=int) == [str(i) for i in range(40)]
    info = await jobs.js.consumer_info("JOBS", "queued")
    assert info.num_redelivered == 0


LEAK: contextvars.ContextVar[str] = contextvars.ContextVar("leak", default="")


async def test_each_message_has_its_own_context_and_its_own_timeouts(jobs: Bus) -> None:
    """Handlers share long-lived workers: what one sets in a context variable stays its own,
    and a timeout inside one cancels that handler alone (its message is retried)."""
    seen: dict[str, str] = {}
    attempts: dict[str, int] = {}

    async def handle(event: JobCreated) -> None:
        seen[event.title] = LEAK.get()
        LEAK.set(event.title)  # never reset: must not reach the next message
        attempts[event.title] = attempts.get(event.title, 0) + 1
        if event.title == "t0" and attempts["t0"] == 1:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)

    await jobs.consume(handle, durable="isolated", concurrency=1, backoff=FAST)
    await jobs.publish_many((JobCreated(title=f"t{i}"), f"i{i}") for i in range(20))
    await eventually(lambda: len(seen) == 20 and attempts["t0"] == 2)
    assert set(seen.values()) == {""}
    assert attempts == {f"t{i}": 2 if i == 0 else 1 for i in range(20)}


async def test_envelope_and_causal_ids_flow_into_caused_events(jobs: Bus) -> None:
    results: list[Envelope[JobDone]] = []

    async def work(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        await current_bus().publish(JobDone(result=event.title.upper()), "j1")

    async def collect(event: JobDone, envelope: Envelope[JobDone]) -> None:
        results.append(envelope)

    await jobs.consume(work, durable="worker")
    await jobs.consume(collect, durable="collector")
    cause = await jobs.publish(JobCreated(title="abc"), "j1", correlation_id="req-42")
    await eventually(lambda: results)
    effect = results[0]
    assert effect.event == JobDone(result="ABC")
    assert effect.subject == "jobs.j1.done"
    assert effect.correlation_id == "req-42"
    assert effect.causation_id == cause.event_id
    assert effect.seq == cause.seq + 1
    assert effect.attempt == 1


async def test_union_annotation_receives_both_and_subject_filters_the_rest(jobs: Bus) -> None:
    both: list[str] = []
    created_only: list[str] = []

    async def any_job(event: JobCreated | JobDone) -> None:
        both.append(type(event).__name__)

    async def created(event: JobCreated) -> None:
        created_only.append(type(event).__name__)

    await jobs.consume(any_job, durable="both")
    await jobs.consume(created, durable="created-only")
    await jobs.publish(JobCreated(title="a"), "u1")
    await jobs.publish(JobDone(), "u1")
    await eventually(lambda: len(both) == 2 and created_only)
    await asyncio.sleep(0.2)
    assert sorted(both) == ["JobCreated", "JobDone"]
    assert created_only == ["JobCreated"]


async def test_batch_handler_gets_bounded_lists_and_retries_failed_batches(jobs: Bus) -> None:
    sizes: list[int] = []
    titles: list[str] = []
    failed_once = False

    async def index(batch: list[Envelope[JobCreated]]) -> None:
        nonlocal failed_once
        if not failed_once:
            failed_once = True
            raise RuntimeError("index offline")
        sizes.append(len(batch))
        titles.extend(env.event.title for env in batch)

    await jobs.publish_many((JobCreated(title=str(i)), f"b{i}") for i in range(35))
    await jobs.consume(index, durable="indexer", batch_size=10, backoff=Backoff(base=0.05))
    await eventually(lambda: len(set(titles)) == 35)
    assert max(sizes) <= 10
    assert sorted(set(titles), key=int) == [str(i) for i in range(35)]


async def test_stopping_handles_a_partial_batch_still_waiting_for_company(
    jobs: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch shorter than batch_size waits BATCH_LINGER for more; a stop in that moment
    handles it (and nothing fires into the stopped consumer afterwards)."""
    monkeypatch.setattr("bus._consumer.BATCH_LINGER", 0.5)
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    handled: list[str] = []

    async def index(batch: list[Envelope[JobCreated]]) -> None:
        handled.extend(env.event.title for env in batch)

    await jobs.publish_many((JobCreated(title=str(i)), f"p{i}") for i in range(5))
    consumer = await jobs.consume(index, durable="lingering", batch_size=100)
    await eventually(lambda: consumer.delivered == 5)
    assert handled == []  # still lingering
    await consumer.stop()
    assert sorted(handled) == ["0", "1", "2", "3", "4"]
    await asyncio.sleep(0.6)  # past the linger: its timer finds nothing to do
    assert errors == []
    info = await jobs.js.consumer_info("JOBS", "lingering")
    assert info.num_ack_pending == 0


async def test_a_long_handler_keeps_its_message_alive(jobs: Bus) -> None:
    calls = 0

    async def long(event: JobCreated) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2.5)

    await jobs.consume(long, durable="long", ack_wait=1.0)
    await jobs.publish(JobCreated(title="slow"), "l1")
    await eventually(lambda: calls == 1)
    await asyncio.sleep(3.5)
    assert calls == 1
    info = await jobs.js.consumer_info("JOBS", "long")
    assert info.num_redelivered == 0


async def test_replay_sends_a_dead_letter_round_again(jobs: Bus) -> None:
    healthy = False
    handled: list[str] = []

    async def handle(event: JobCreated) -> None:
        if not healthy:
            raise RuntimeError("downstream is down")
        handled.append(event.title)

    await jobs.consume(handle, durable="replayable", max_deliver=1)
    await jobs.publish(JobCreated(title="again"), "r1")
    letters: list = []
    for _ in range(200):
        letters = await jobs.dead_letters("JOBS")
        if letters:
            break
        await asyncio.sleep(0.05)
    assert len(letters) == 1
    healthy = True
    with pytest.raises(PublishError, match="duplicate window"):
        await jobs.replay("JOBS", letters[0].seq)  # within 1 s: JetStream would drop it
    assert len(await jobs.dead_letters("JOBS")) == 1
    await asyncio.sleep(1.2)
    replayed = await jobs.replay("JOBS", letters[0].seq)
    assert replayed.subject == "jobs.r1.created"
    assert replayed.event_id == letters[0].event_id
    await eventually(lambda: handled == ["again"])
    assert await jobs.dead_letters("JOBS") == []


async def test_close_lets_a_handler_in_flight_finish(nats_url: str) -> None:
    finished: list[str] = []
    started = asyncio.Event()

    async with Bus(nats_url, streams=[JOBS], drain_timeout=5.0) as bus:

        async def slow(event: JobCreated) -> None:
            started.set()
            await asyncio.sleep(0.5)
            finished.append(event.title)

        await bus.consume(slow, durable="graceful")
        await bus.publish(JobCreated(title="in flight"), "g1")
        await started.wait()
    assert finished == ["in flight"]
    async with Bus(nats_url) as check:
        info = await check.js.consumer_info("JOBS", "graceful")
        assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


async def _valid(event: JobCreated) -> None:
    return None


async def _untyped(event) -> None:  # type: ignore[no-untyped-def]
    return None


async def _not_event(event: int) -> None:
    return None


def _not_async(event: JobCreated) -> None:
    return None


@pytest.mark.parametrize(
    ("fn", "options", "message"),
    [
        (_not_async, {}, "must be an async function"),
        (_untyped, {}, "pass a subject"),
        (_not_event, {}, "is not an Event class"),
        (_valid, {"batch_size": 5}, "batch_size needs"),
        (_valid, {"concurrency": 0}, "must be >= 1"),
        (_valid, {"durable": "has space"}, "durable name"),
        (_valid, {"subject": "jobs.>.x"}, "must be the last token"),
    ],
)
def test_handler_declaration_errors(fn: object, options: dict, message: str) -> None:
    options = {"durable": "d", **options}
    subject = options.pop("subject", None)
    with pytest.raises(ConfigError, match=message):
        Router().subscribe(subject, **options)(fn)  # type: ignore[arg-type]


def test_router_refuses_a_durable_twice_and_bus_refuses_late_decorators() -> None:
    router = Router()
    router.subscribe(durable="same")(_valid)
    with pytest.raises(ConfigError, match="used twice"):
        router.subscribe(durable="same")(_valid)


async def test_subscribe_after_start_points_to_consume(jobs: Bus) -> None:
    with pytest.raises(ConfigError, match="consume"):
        jobs.subscribe(durable="late")(_valid)


async def test_a_deleted_consumer_is_gone_from_its_stream(jobs: Bus) -> None:
    from bus import StreamNotFound

    async def handle(event: JobCreated) -> None: ...

    await (await jobs.consume(handle, durable="short-lived")).stop()
    names = {c.name for c in await jobs.streams.consumers(JOBS.name)}
    assert "short-lived" in names
    await jobs.streams.delete_consumer(JOBS.name, "short-lived")
    assert "short-lived" not in {c.name for c in await jobs.streams.consumers(JOBS.name)}
    with pytest.raises(StreamNotFound):
        await jobs.streams.delete_consumer(JOBS.name, "short-lived")
