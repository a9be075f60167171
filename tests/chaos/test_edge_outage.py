"""NATS goes away under a running edge: it says so, refuses writes with 503, loses nothing it
acknowledged, and recovers by itself when the server is back (queries from memory included)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bus import Bus, EmbeddedServer, Projector
from services.demo import app
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve


@pytest.fixture
async def edge_on(nats_server: EmbeddedServer) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(create_app(app, nats_server.url, api_keys=KEYS)):
        yield client


async def until(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
async def test_readyz_fails_while_nats_is_down_and_everything_recovers(
    nats_server: EmbeddedServer, edge_on: httpx.AsyncClient
) -> None:
    async with (
        Bus(nats_server.url, registry=app.registry, streams=app.streams) as bus,
        Projector(bus, app.projections.values()),
    ):
        first = await edge_on.post(
            "/api/v1/events/tasks.o1.created", json={"title": "before"}, headers=WRITE
        )
        assert first.status_code == 201
        got = await edge_on.get(
            f"/api/v1/projections/task/o1?after_seq={first.json()['seq']}", headers=READ
        )
        assert got.json()["state"]["title"] == "before"

        nats_server.stop()

        async def not_ready() -> bool:
            return (await edge_on.get("/readyz")).status_code == 503

        await until(not_ready)
        assert (await edge_on.get("/livez")).status_code == 200  # the process itself is fine
        refused = await edge_on.post(
            "/api/v1/events/tasks.o2.created", json={"title": "during"}, headers=WRITE
        )
        assert refused.status_code in (503, 504)
        assert refused.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in refused.text

        nats_server.start()  # same port and store

        async def ready() -> bool:
            return (await edge_on.get("/readyz")).status_code == 200

        await until(ready)
        again = await edge_on.post(
            "/api/v1/events/tasks.o1.progressed", json={"attempt": 1}, headers=WRITE
        )
        assert again.status_code == 201
        seq = again.json()["seq"]
        after = await edge_on.get(f"/api/v1/projections/task/o1?after_seq={seq}", headers=READ)
        assert after.status_code == 200
        assert after.json()["state"]["status"] == "running"  # not the cached "created"
        assert after.json()["seq"] == seq
        assert (await bus.streams.info("TASKS")).messages >= 2  # nothing acknowledged was lost
