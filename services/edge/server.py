"""Running the edge: inside `bus up` (the host process owns the signals) or on its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn


class EdgeServer(uvicorn.Server):
    """uvicorn without its own signal handling, for running beside other services."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_edge(api: Any, host: str, port: int) -> tuple[EdgeServer, asyncio.Task[None], int]:
    """Serve `api` in this event loop; returns the server, its task and the bound port."""
    server = EdgeServer(uvicorn.Config(api, host=host, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve(), name="edge")
    while not server.started:
        if task.done():  # failed to start (port taken...): raise its error
            await task
            raise RuntimeError("the edge stopped before it started")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, task, int(bound)


async def stop_edge(server: EdgeServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task
