"""Publish rates that hold across edges: two uvicorn edges on one nats-server, one key limited
to 100 events/s, driven harder than that through both; together they accept at most 100
events in any wall-clock second (the shared window), and refuse the rest with 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bus import Bus
from services.demo import app
from services.edge import create_app
from services.edge.limits import RATES, PublishLimits
from tests.edge import KEYS, WRITE, serve

RATE = 100
BATCH = 10  # events per request: the demand is cheap to make on a small machine
SECONDS = 2.5  # how long both edges are driven (a bounded loop, not a timing assertion)


@pytest.fixture
async def edges(tasks: Bus, nats_url: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    servers = [serve(create_app(app, nats_url, api_keys=KEYS, publish_rate=RATE)) for _ in "ab"]
    clients = [await anext(server) for server in servers]
    try:
        yield clients
    finally:
        for server in servers:
            await server.aclose()


async def drive(edge: httpx.AsyncClient, until: float, accepted: list[float]) -> list[int]:
    codes, n = [], 0
    while time.time() < until:
        n += 1
        batch = {
            "domain": "tasks",
            "id": f"{id(edge)}-{n}",
            "events": [{"event": "created", "data": {"title": "x"}}] * BATCH,
        }
        answer = await edge.post("/api/v1/events:batch", json=batch, headers=WRITE)
        codes.append(answer.status_code)
        if answer.status_code == 201:
            accepted.append(time.time())
        else:
            assert answer.status_code == 429, answer.text
            assert int(answer.headers["retry-after"]) >= 1
            await asyncio.sleep(0.01)  # a client that honours no Retry-After, nearly
    return codes


async def test_two_edges_share_one_rate(edges: list[httpx.AsyncClient], tasks: Bus) -> None:
    start = time.time()
    accepted: list[float] = []
    runs = [drive(edge, start + SECONDS, accepted) for edge in edges for _ in range(3)]
    codes = [c for run in await asyncio.gather(*runs) for c in run]
    windows = int(time.time()) - int(start) + 1  # wall-clock seconds the run touched
    events = codes.count(201) * BATCH
    assert codes.count(429) > 0  # driven past the rate
    assert events <= RATE * windows, (events, windows)
    assert events == (await tasks.streams.info("TASKS")).messages  # a refusal stored nothing
    assert events >= RATE  # the budget was used, not lost in leases


async def test_leases_split_one_budget(nats_url: str) -> None:
    """Two limiters on one KV bucket: together one window's budget, whoever asks first."""
    async with Bus(nats_url, buckets=[RATES]) as bus:
        for _ in range(3):  # a run that straddles a second is tried again
            a, b = PublishLimits(50), PublishLimits(50)
            a.bucket = b.bucket = bus.bucket(RATES.name)
            window = int(time.time())
            taken = [await limits.take("k", 1) == 0 for _ in range(60) for limits in (a, b)]
            if int(time.time()) == window:
                break
        assert taken.count(True) == 50
        assert not any(taken[-20:])  # the rest refused, on both
        assert await a.take("other", 1) == 0  # another caller has its own budget
