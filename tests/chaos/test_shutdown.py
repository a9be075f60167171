"""SIGTERM to `bus worker`, `bus projector` and `bus edge` while they work: each exits 0
within a bound, handlers in flight finish or their messages go to another worker, nothing is
lost, and a worker's spans and metrics leave with it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import Bus, EmbeddedServer, ProjectionView
from bus._server import free_port
from services import demo
from tests.chaos import slow_app
from tests.chaos.slow_app import Finished, Job, Started
from tests.domain import eventually
from tests.edge import KEYS, WRITE
from tests.otlp import Receiver
from tests.processes import BUS, running, wait_ready

EXIT_BOUND = 15.0  # seconds from SIGTERM to exit
JOB_SECONDS = 2.0
JOBS = 8  # twice the worker's concurrency: some in flight, some waiting
SLOW_APP = "tests.chaos.slow_app:app"
TASKS = 20_000
POSTERS = 8  # concurrent HTTP clients publishing through the edge  # demo events the projector replays when it is told to stop
Jobs = dict[str, dict[str, list[int]]]  # job id -> {"started": [pids], "finished": [pids]}


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "BUS_NATS_URL": url, **extra}


async def terminate(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM; (exit status, seconds to exit), killing it past the bound."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, EXIT_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"pid {process.pid} still running {EXIT_BOUND:g} s after SIGTERM"
        ) from None
    return code, time.monotonic() - started


async def job_log(bus: Bus) -> Jobs:
    """job id -> {"started": [pids], "finished": [pids]}, read from the stream."""
    log: Jobs = defaultdict(lambda: {"started": [], "finished": []})
    next_seq = 1
    while page := await bus.read("SLOW", next_seq, limit=1000):
        for message in page:
            event = bus.open(message).event
            job = message.subject.split(".")[1]
            if isinstance(event, Started):
                log[job]["started"].append(event.pid)
            elif isinstance(event, Finished):
                log[job]["finished"].append(event.pid)
        next_seq = page[-1].seq + 1
    return log


async def jobs_until(bus: Bus, check: Callable[[Jobs], bool], log: Path, seconds: float) -> Jobs:
    """The job log once `check` holds (fail with the process's log after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not check(jobs := await job_log(bus)):
        if time.monotonic() > deadline:
            raise AssertionError((await asyncio.to_thread(log.read_text))[-4000:])
        await asyncio.sleep(0.05)
    return jobs


def all_finished(jobs: Jobs) -> bool:
    return len(jobs) == JOBS and all(j["finished"] for j in jobs.values())


@pytest.mark.slow
async def test_sigterm_to_a_worker_mid_handler(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    env = env_for(nats_server.url)
    app = slow_app.app
    async with Bus(nats_server.url, registry=app.registry, streams=app.streams) as bus:
        await bus.publish_many((Job(seconds=JOB_SECONDS), f"j{i}") for i in range(JOBS))
        first_log = tmp_path / "worker-a.log"
        with running([BUS, "worker", "--app", SLOW_APP], first_log, env) as first:
            log = await jobs_until(bus, lambda jobs: len(jobs) >= 4, first_log, 30)
            in_flight = {job for job, j in log.items() if first.pid in j["started"]}
            code, seconds = await terminate(first)
        assert code == 0, first_log.read_text()

        second_log = tmp_path / "worker-b.log"
        with running([BUS, "worker", "--app", SLOW_APP], second_log, env) as second:
            log = await jobs_until(bus, all_finished, second_log, 60)
        finished_by_first = {job for job, j in log.items() if first.pid in j["finished"]}
        finished_by_second = {job for job, j in log.items() if second.pid in j["finished"]}
    print(
        f"\nworker SIGTERM: exit {code} after {seconds:.2f} s; in flight {sorted(in_flight)}; "
        f"finished by the first {sorted(finished_by_first)}, by the second "
        f"{sorted(finished_by_second)}"
    )
    assert set(log) == {f"j{i}" for i in range(JOBS)}
    assert in_flight <= finished_by_first | finished_by_second


@pytest.mark.slow
async def test_handlers_in_flight_at_sigterm_finish_their_work(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    app = slow_app.app
    async with Bus(nats_server.url, registry=app.registry, streams=app.streams) as bus:
        await bus.publish_many((Job(seconds=1.0), f"j{i}") for i in range(4))
        log = tmp_path / "worker.log"
        with running([BUS, "worker", "--app", SLOW_APP], log, env_for(nats_server.url)) as worker:
            await jobs_until(bus, lambda jobs: len(jobs) == 4, log, 30)
            code, _ = await terminate(worker)
        assert code == 0
        jobs = await job_log(bus)
    assert all(j["finished"] == [worker.pid] for j in jobs.values()), jobs


async def scrape_until_gone(url: str, process: subprocess.Popen[bytes]) -> str:
    """The last answer of `url` before the process exited."""
    last = ""
    async with httpx.AsyncClient(timeout=1) as client:
        while process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                last = (await client.get(url)).text
            await asyncio.sleep(0.1)
    return last


def counted(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with these labels in a Prometheus exposition."""
    samples = (s for f in text_string_to_metric_families(exposition) for s in f.samples)
    return next(
        (s.value for s in samples if s.name == name and labels.items() <= s.labels.items()), None
    )


@pytest.mark.slow
async def test_sigterm_flushes_a_workers_spans_and_metrics(
    nats_server: EmbeddedServer, receiver: Receiver, tmp_path: Path
) -> None:
    """Spans are batched for a minute here, so every span the receiver gets was flushed at
    exit: those of jobs finished before the SIGTERM and of those finished while it drained.
    The last scrape of /metrics, made while the worker stops, counts every job it did."""
    port = free_port()
    env = env_for(
        nats_server.url,
        BUS_METRICS_PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    env.pop("OTEL_SERVICE_NAME", None)
    app = slow_app.app
    async with Bus(nats_server.url, registry=app.registry, streams=app.streams) as bus:
        await bus.publish_many((Job(seconds=JOB_SECONDS), f"j{i}") for i in range(JOBS))
        log = tmp_path / "worker.log"
        with running([BUS, "worker", "--app", SLOW_APP], log, env) as worker:
            jobs = await jobs_until(
                bus, lambda jobs: len(jobs) == JOBS and any(j["finished"] for j in jobs.values()),
                log, 60,
            )  # fmt: skip
            in_flight = sorted(job for job, j in jobs.items() if not j["finished"])
            exported_before = [s for service, s in receiver.received() if service == "slow-worker"]
            scraping = asyncio.create_task(
                scrape_until_gone(f"http://127.0.0.1:{port}/metrics", worker)
            )
            code, seconds = await terminate(worker)
            last_scrape = await scraping
        assert code == 0, log.read_text()
        finished = {
            m.headers["Nats-Msg-Id"]
            for m in await bus.read("SLOW", 1, 1000)
            if isinstance(bus.open(m).event, Finished)
        }
    spans = [s for service, s in receiver.received() if service == "slow-worker"]
    print(
        f"\nworker SIGTERM with telemetry: exit {code} after {seconds:.2f} s; in flight "
        f"{in_flight}; spans exported before the SIGTERM {len(exported_before)}, at exit "
        f"{len(spans)}"
    )
    assert in_flight, "the SIGTERM should land while jobs run"
    assert exported_before == []
    assert len(finished) == JOBS
    assert sum(s.name == "process slow-worker" for s in spans) == JOBS
    published = {
        a.value.string_value
        for s in spans
        if s.name == "publish slow.{id}.finished"
        for a in s.attributes
        if a.key == "messaging.message.id"
    }
    assert published == finished  # the last of them ended after the SIGTERM
    consumed = "messaging_client_consumed_messages_total"
    assert counted(last_scrape, consumed, outcome="ok") == JOBS
    sent = "messaging_client_sent_messages_total"
    assert counted(last_scrape, sent, outcome="ok") == 2 * JOBS  # started and finished


@pytest.mark.slow
async def test_sigterm_to_a_projector_mid_replay(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    env = env_for(nats_server.url)
    async with Bus(nats_server.url, registry=demo.app.registry, streams=demo.app.streams) as bus:
        for start in range(0, TASKS, 1000):
            results = await bus.publish_many(
                (demo.TaskCreated(title=f"task {i}"), f"t{i}") for i in range(start, start + 1000)
            )
        last = results[-1].seq
        counts = ProjectionView(bus, demo.app.projection("task_counts"))
        first_log = tmp_path / "projector-a.log"
        with running([BUS, "projector"], first_log, env) as first:
            await counts.wait_for(TASKS // 10, timeout=30)  # well into the replay
            code, seconds = await terminate(first)
        assert code == 0, first_log.read_text()
        position = (await counts.status()).position
        with running([BUS, "projector"], tmp_path / "projector-b.log", env):
            await counts.wait_for(last, timeout=60)
            tasks = ProjectionView(bus, demo.app.projection("task"))
            await tasks.wait_for(last, timeout=60)
            created = await counts.get("created")
            assert created is not None
            assert created[0].count == TASKS  # each event once: nothing skipped, nothing twice
            page, _ = await tasks.list(prefix=f"t{TASKS - 1}")
            assert [key for key, _ in page] == [f"t{TASKS - 1}"]
    print(
        f"\nprojector SIGTERM: exit {code} after {seconds:.2f} s at position {position} of "
        f"{last}; the next one finished the replay: created = {created[0].count}"
    )
    assert 0 < position < last, "the SIGTERM should land mid-replay"


@pytest.mark.slow
async def test_sigterm_to_the_edge_mid_requests(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(nats_server.url, BUS_EDGE_PORT=str(port), BUS_API_KEYS=KEYS)
    acked: dict[str, int] = {}  # event id -> stream sequence, for every 201
    outcomes: Counter[str] = Counter()
    stopped = asyncio.Event()

    async def post(client: httpx.AsyncClient, worker: int) -> None:
        for i in itertools.count():
            if stopped.is_set():
                return
            try:
                answer = await client.post(
                    f"/api/v1/events/tasks.e{worker}-{i}.created", json={"title": "x"}
                )
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            outcomes[str(answer.status_code)] += 1
            if answer.status_code == 201:
                body = answer.json()
                acked[body["id"]] = body["seq"]

    async with Bus(nats_server.url, streams=demo.app.streams):
        pass  # the stream the edge publishes to (bus up or a worker would declare it)
    log = tmp_path / "edge.log"
    with running([BUS, "edge"], log, env) as edge:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, base, edge, log)
        async with httpx.AsyncClient(base_url=base, headers=WRITE, timeout=10) as client:
            posters = [asyncio.create_task(post(client, w)) for w in range(POSTERS)]
            try:
                await eventually(lambda: len(acked) >= 200, timeout=30)
                acked_before = len(acked)
                code, seconds = await terminate(edge)
            finally:
                stopped.set()
                await asyncio.gather(*posters)
    assert code == 0, log.read_text()
    async with Bus(nats_server.url) as bus:
        stored = {m.headers["Nats-Msg-Id"]: m.seq for m in await bus.read("TASKS", 1, 10_000)}
    assert acked.items() <= stored.items()  # every 201 is in the stream, where it said
    print(
        f"\nedge SIGTERM: exit {code} after {seconds:.2f} s; 201s before it {acked_before}, in "
        f"all {len(acked)}; stored {len(stored)}; answers {dict(outcomes)}"
    )


@pytest.mark.slow
async def test_sigterm_to_the_edge_with_a_live_tail_open(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(nats_server.url, BUS_EDGE_PORT=str(port), BUS_API_KEYS=KEYS)
    async with Bus(nats_server.url, registry=demo.app.registry, streams=demo.app.streams) as bus:
        await bus.publish(demo.TaskCreated(title="x"), "t1")
    log = tmp_path / "edge.log"
    with running([BUS, "edge"], log, env) as edge:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, base, edge, log)
        async with (
            httpx.AsyncClient(base_url=base, headers=WRITE, timeout=30) as client,
            client.stream("GET", "/events", params={"subject": "tasks.>", "from_seq": 1}) as tail,
        ):
            lines = tail.aiter_lines()
            assert (await anext(lines)).startswith("id: 1")
            code, seconds = await terminate(edge)
    assert code == 0, f"exit {code} after {seconds:.2f} s"
