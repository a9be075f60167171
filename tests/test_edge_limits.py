"""The edge's `/metrics`, CORS, publish rate limit and AsyncAPI document, under a real uvicorn
and nats-server."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from bus import Bus
from services.demo import app
from services.edge import create_app
from tests.edge import KEYS, WRITE, serve

DATA = Path(__file__).parent / "data"


async def stored(bus: Bus) -> int:
    return (await bus.streams.info("TASKS")).messages


async def test_metrics_by_route_template_with_bus_gauges(
    edge: httpx.AsyncClient, tasks: Bus
) -> None:
    posted = await edge.post("/api/v1/events/tasks.m7.created", json={"title": "t"}, headers=WRITE)
    assert posted.status_code == 201
    await edge.get("/api/v1/projections/task/m7?after_seq=1", headers=WRITE)
    await edge.get("/api/v1/projections/task/not-there", headers=WRITE)

    scraped = await edge.get("/metrics")
    assert scraped.status_code == 200  # an explicit route: no redirect to /metrics/
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    route = 'http_route="/api/v1/projections/{name}/{key}"'
    assert f'http_response_status_code="404",{route}' in text
    assert f'http_response_status_code="200",{route}' in text
    assert "m7" not in text  # no ids in labels
    assert "not-there" not in text
    assert 'bus_stream_messages{stream="TASKS"} 1.0' in text
    assert 'bus_projection_position{projection="task"} 1.0' in text
    assert 'bus_projection_lag_events{projection="task_counts"} 0.0' in text

    open_metrics = await edge.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


@pytest.fixture
async def strict_edge(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(
        app, nats_url, api_keys=KEYS, publish_rate=2, cors_origins=["https://app.example"]
    )
    async for client in serve(api):
        yield client


async def test_publishing_past_the_rate_gets_429_and_stores_nothing(
    strict_edge: httpx.AsyncClient, tasks: Bus
) -> None:
    codes = [
        (
            await strict_edge.post(
                f"/api/v1/events/tasks.r{i}.created", json={"title": "t"}, headers=WRITE
            )
        ).status_code
        for i in range(3)
    ]
    assert codes == [201, 201, 429]
    limited = await strict_edge.post(
        "/api/v1/events/tasks.r9.created", json={"title": "t"}, headers=WRITE
    )
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    batch = {
        "domain": "tasks",
        "id": "b1",
        "events": [{"event": "created", "data": {"title": "t"}}] * 3,
    }
    assert (
        await strict_edge.post("/api/v1/events:batch", json=batch, headers=WRITE)
    ).status_code == 429
    tool = {
        "name": "publish_event",
        "arguments": {"subject": "tasks.r5.created", "data": {"title": "t"}},
    }
    called = (await strict_edge.post("/mcp/v2/tools/call", json=tool, headers=WRITE)).json()
    assert called["isError"] is True
    assert "429" in called["content"][0]["text"]
    assert await stored(tasks) == 2


async def test_cors_allows_configured_origins_only(strict_edge: httpx.AsyncClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,idempotency-key",
    }
    allowed = await strict_edge.options(
        "/api/v1/events/tasks.c1.created", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    refused = await strict_edge.options(
        "/api/v1/events/tasks.c1.created", headers={"Origin": "https://evil.example", **preflight}
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = await strict_edge.get("/livez", headers={"Origin": "https://app.example"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


async def test_asyncapi_document_is_valid_asyncapi_3(edge: httpx.AsyncClient) -> None:
    schema = json.loads(gzip.decompress((DATA / "asyncapi-3.0.0.json.gz").read_bytes()))
    response = await edge.get("/asyncapi.json")
    assert response.status_code == 200
    document = response.json()
    jsonschema.Draft7Validator(schema).validate(document)
    created = document["channels"]["tasks_created"]
    assert created["address"] == "tasks.{id}.created"
    payload = document["components"]["schemas"]["TaskCreated"]
    assert payload["required"] == ["title"]
    assert set(document["operations"]) >= {"send_tasks_created", "receive_tasks_failed"}
