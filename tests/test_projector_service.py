"""The projector as processes: kill -9 mid-batch and resume; two instances and a failover;
the CLI verbs on projections and aggregates."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import Bus, ProjectionView
from bus._lease import BUCKET as LEASES
from services.demo import TaskCreated, app
from tests.processes import BUS, running


class Projectors:
    """`bus projector` processes against one server, stopped at teardown."""

    def __init__(self, url: str, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.url, self.tmp, self.stack = url, tmp, stack
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BUS_NATS_URL": self.url}
        log = self.tmp / f"projector{len(self.procs)}.log"
        proc = self.stack.enter_context(running([BUS, "projector"], log, env))
        self.procs.append(proc)
        return proc


@pytest.fixture
def projectors(nats_url: str, tmp_path: Path) -> Iterator[Projectors]:
    with contextlib.ExitStack() as stack:
        yield Projectors(nats_url, tmp_path, stack)


@pytest.fixture
async def tasks_bus(nats_url: str):  # type: ignore[no-untyped-def]
    async with Bus(nats_url, registry=app.registry, streams=app.streams) as bus:
        yield bus


async def created_count(bus: Bus) -> int:
    found = await ProjectionView(bus, app.projection("task_counts")).get("created")
    return found[0].count if found else 0  # type: ignore[attr-defined]


async def publish_tasks(bus: Bus, start: int, count: int) -> int:
    results = await bus.publish_many(
        (TaskCreated(title=f"task {i}"), f"t{i}") for i in range(start, start + count)
    )
    return results[-1].seq


@pytest.mark.slow
async def test_kill_9_mid_batch_then_resume_applies_each_event_once(
    tasks_bus: Bus, projectors: Projectors
) -> None:
    last = await publish_tasks(tasks_bus, 0, 6000)
    status = ProjectionView(tasks_bus, app.projection("task_counts"))
    first = projectors.start()
    await status.wait_for(1, timeout=30)  # it has checkpointed its first batch
    first.kill()  # SIGKILL between batches or in the middle of one
    first.wait()
    position = (await status.status()).position
    assert 0 < position < last, "the kill should land mid-run"
    projectors.start()
    await status.wait_for(last, timeout=60)
    assert await created_count(tasks_bus) == 6000
    task = ProjectionView(tasks_bus, app.projection("task"))
    await task.wait_for(last, timeout=60)
    page, _ = await task.list(prefix="t5999")
    assert [key for key, _ in page] == ["t5999"]


@pytest.mark.slow
async def test_the_standby_projector_takes_over(tasks_bus: Bus, projectors: Projectors) -> None:
    view = ProjectionView(tasks_bus, app.projection("task_counts"))
    projectors.start()
    projectors.start()
    await view.wait_for(await publish_tasks(tasks_bus, 0, 100), timeout=30)
    holder = await _lease_holder(tasks_bus, "projection.task_counts")
    active = next(p for p in projectors.procs if holder.endswith(f"-{p.pid}"))
    active.kill()
    active.wait()
    last = await publish_tasks(tasks_bus, 100, 100)
    await view.wait_for(last, timeout=30)  # within the lease TTL, plus a batch
    assert await created_count(tasks_bus) == 200
    assert await _lease_holder(tasks_bus, "projection.task_counts") != holder


async def _lease_holder(bus: Bus, key: str) -> str:
    entry = await (await bus.js.key_value(LEASES)).get(key)
    return (entry.value or b"").decode()


def run_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUS_NATS_URL": url}
    return subprocess.run([BUS, *args], env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
async def test_cli_projections_and_aggregates(
    tasks_bus: Bus, projectors: Projectors, nats_url: str
) -> None:
    projectors.start()
    view = ProjectionView(tasks_bus, app.projection("task"))
    last = await publish_tasks(tasks_bus, 0, 3)
    await view.wait_for(last, timeout=30)

    listed = json.loads(run_cli("projections", "list", "--json", url=nats_url).stdout)
    assert {s["name"]: s["position"] for s in listed} == {"task": last, "task_counts": last}

    got = json.loads(run_cli("projections", "get", "task", "t1", url=nats_url).stdout)
    assert got["state"]["title"] == "task 1"
    assert got["state"]["status"] == "created"

    rebuilt = run_cli("projections", "rebuild", "task", "--json", url=nats_url)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["generation"] == 2

    shown = json.loads(run_cli("aggregate", "show", "tasks", "t2", "--json", url=nats_url).stdout)
    assert shown["version"] == 3
    assert [e["type"] for e in shown["events"]] == ["TaskCreated"]

    for args, message in [
        (("projections", "get", "nope", "k"), "no projection 'nope'"),
        (("projections", "get", "task", "missing"), "has no key 'missing'"),
        (("projections", "rebuild", "nope"), "no projection 'nope'"),
        (("aggregate", "show", "tasks", "bad id"), "invalid subject"),
        (("aggregate", "show", "nodomain", "x"), "does not exist"),
    ]:
        failed = run_cli(*args, url=nats_url)
        assert failed.returncode == 1
        assert message in failed.stderr
        assert "Traceback" not in failed.stderr
