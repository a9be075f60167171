"""Serving the edge under a real uvicorn for tests, with the API keys the tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from services.edge.server import start_edge, stop_edge

WRITE = {"Authorization": "Bearer w-key"}
READ = {"Authorization": "Bearer r-key"}
KEYS = "w-key:read+write,r-key:read"


async def serve(api: object) -> AsyncIterator[httpx.AsyncClient]:
    server, task, port = await start_edge(api, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        await stop_edge(server, task)
