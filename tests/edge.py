"""Serving the edge under a real uvicorn for tests, with the API keys the tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from services.edge.server import start_edge, stop_edge

WRITE = {"Authorization": "Bearer w-key"}
READ = {"Authorization": "Bearer r-key"}
KEYS = "w-key:read+write,r-key:read"


def bearer(credential: str) -> dict[str, str]:
    """The `Authorization` header sending an API key or a token."""
    return {"Authorization": f"Bearer {credential}"}


async def serve(api: object) -> AsyncIterator[httpx.AsyncClient]:
    server, task, port = await start_edge(api, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        await stop_edge(server, task)


async def sse_events(
    edge: httpx.AsyncClient, path: str, count: int, headers: dict[str, str]
) -> list[dict[str, str]]:
    """The first `count` server-sent events of `path` (each as its fields), then disconnect."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with edge.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line:
                field, _, value = line.partition(": ")
                current[field] = value
            elif current:
                events.append(current)
                current = {}
                if len(events) == count:
                    break
    return events
