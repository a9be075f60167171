"""kill -9 of the demo's worker, then of the server, while tasks pour in: every follow-up
event is stored once per attempt of its task.

The demo's handler publishes `progressed`, then `failed` (and raises) while the attempt is
within its task's `fail_times`, else `completed`. A handler killed after publishing, or whose
ack the server lost, runs again on the same message; its events must not be stored again.
So, per task: at most one `completed` (exactly one for a task that completes), one
`progressed` per attempt that began a new epoch (the first, and each after a clean failure:
at most one more than the `failed` events), and no `failed` without its `progressed`. The
`task_counts` projection counts what the stream holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from bus import Bus, BusError, EmbeddedServer, ProjectionView
from services import demo
from tests.processes import BUS, running

TASKS = 3000
CHUNK = 30  # tasks published together, every PACE seconds
PACE = 0.1
FAIL_TIMES = (0, 0, 0, 0, 0, 0, 1, 2, 0, 9)  # by task number; 9 >= max_deliver: dead letter
DOWN_FOR = 1.0  # seconds the server stays dead
SETTLE = 150.0  # seconds for every task to be handled (a killed handler's message comes back
# after the worker's ack_wait, 30 s)
APP = "services.demo:app"


def fail_times(n: int) -> int:
    return FAIL_TIMES[n % len(FAIL_TIMES)]


async def feed(bus: Bus, published: list[int]) -> None:
    """TASKS tasks, CHUNK at a time; a chunk refused while the server is down goes again
    with the same event ids (stored once)."""
    for start in range(0, TASKS, CHUNK):
        chunk = range(start, min(start + CHUNK, TASKS))
        while True:
            try:
                await asyncio.gather(
                    *(
                        bus.publish(
                            demo.TaskCreated(title=f"task {n}", fail_times=fail_times(n)),
                            f"t{n}",
                            event_id=f"created-{n}",
                        )
                        for n in chunk
                    )
                )
                break
            except BusError:
                await asyncio.sleep(0.2)
        published.append(len(chunk))
        await asyncio.sleep(PACE)


async def stream_by_task(bus: Bus) -> dict[str, Counter[str]]:
    """Task id -> how many events of each name the stream holds."""
    tasks: dict[str, Counter[str]] = defaultdict(Counter)
    next_seq = 1
    while page := await bus.read("TASKS", next_seq, limit=1000):
        for m in page:
            _, task, name = m.subject.split(".")
            tasks[task][name] += 1
        next_seq = page[-1].seq + 1
    return tasks


async def dead_lettered(bus: Bus) -> set[str]:
    dead: set[str] = set()
    next_seq = 1
    while letters := await bus.dead_letters("TASKS", next_seq, 1000):
        dead |= {d.original_subject.split(".")[1] for d in letters}
        next_seq = letters[-1].seq + 1
    return dead


async def until(check: Callable[[], object], what: str, seconds: float, logs: list[Path]) -> None:
    """Until `check()` (awaited if it gives an awaitable) is true; fail with the logs."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(BusError):
            answer = check()
            if await answer if inspect.isawaitable(answer) else answer:
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"{p.name}: {p.read_text()[-2000:]}" for p in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        await asyncio.sleep(0.5)


def handled(log: Path) -> bool:
    """Whether the worker logging to `log` has finished a handler (it is connected)."""
    return '"logger": "tasks"' in log.read_text()


def kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_kill_9_of_worker_and_server_stores_each_follow_up_once(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    env = {**os.environ, "BUS_NATS_URL": nats_server.url}
    app = demo.app
    logs = [tmp_path / name for name in ("projector.log", "worker-a.log", "worker-b.log")]
    published: list[int] = []
    figures: dict[str, object] = {}
    async with Bus(
        nats_server.url, registry=app.registry, streams=app.streams, drain_timeout=2.0
    ) as bus:

        async def busy() -> bool:  # (StreamNotFound until the worker made its consumer)
            return bool((await bus.streams.consumer("TASKS", "tasks-worker")).ack_pending)

        with (
            running([BUS, "projector", "--app", APP], logs[0], env),
            running([BUS, "worker", "--app", APP], logs[1], env) as first,
        ):
            feeding = asyncio.create_task(feed(bus, published))
            await until(lambda: sum(published) >= TASKS // 3, "a third published", 60, logs)
            await until(busy, "the worker in the middle of handlers", 30, logs)
            kill(first)
            figures["worker killed at"] = sum(published)
            with running([BUS, "worker", "--app", APP], logs[2], env):
                await until(lambda: sum(published) >= 2 * TASKS // 3, "2/3 published", 60, logs)
                # The first worker's unacked messages keep `busy` true until their ack_wait:
                # the server must die while the second worker handles, not while it starts.
                await until(lambda: handled(logs[2]), "the second worker handling", 30, logs)
                await until(busy, "the worker in the middle of handlers", 30, logs)
                nats_server.kill()
                figures["server killed at"] = sum(published)
                await asyncio.sleep(DOWN_FOR)
                await asyncio.to_thread(nats_server.start)
                await feeding

                async def settled() -> bool:
                    tasks = await stream_by_task(bus)
                    dead = await dead_lettered(bus)
                    return len(tasks) == TASKS and all(
                        counts["completed"] or task in dead for task, counts in tasks.items()
                    )

                await until(settled, "every task completed or dead-lettered", SETTLE, logs)
                last = (await bus.streams.info("TASKS")).last_seq
                view = ProjectionView(bus, app.projection("task_counts"))
                await view.wait_for(last, timeout=60)
                tasks = await stream_by_task(bus)
                dead = await dead_lettered(bus)
                projected = {s: await view.get(s) for s in demo.STATUS_OF.values()}

    stored = Counter[str]()
    for task_counts in tasks.values():
        stored += task_counts
    figures |= {"stored": dict(stored), "dead-lettered": len(dead)}
    print(f"\nexactly-once figures: {figures}")

    assert len(tasks) == TASKS
    assert all(counts["created"] == 1 for counts in tasks.values())
    assert dead == {f"t{n}" for n in range(TASKS) if fail_times(n) >= demo.MAX_DELIVER}
    twice = {t: dict(c) for t, c in tasks.items() if c["completed"] > 1}
    assert not twice, f"completed stored more than once: {list(twice.items())[:5]}"
    assert all(c["completed"] == 1 for t, c in tasks.items() if t not in dead)
    repeated = {
        t: dict(c)
        for t, c in tasks.items()
        if c["progressed"] > c["failed"] + 1 or c["failed"] > c["progressed"]
    }
    assert not repeated, f"an attempt's events stored twice: {list(repeated.items())[:5]}"
    # The projection counted each stored event once.
    for name, status in demo.STATUS_OF.items():
        found = projected[status]
        assert (found[0].count if found else 0) == stored[name], status
    completed = projected["completed"]
    assert completed is not None
    assert completed[0].count == TASKS - len(dead)
