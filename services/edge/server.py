"""Running the edge: inside `bus up` (the host process owns the signals) or on its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

import uvicorn

from bus import App, Bus, Circuits, Component, ConfigError, Registration
from services.runtime.settings import Settings

GRACE = 3  # seconds open connections (live tails never end by themselves) get at a stop
EDGE_PATHS = ("/livez", "/readyz", "/metrics", "/docs", "/mcp")


class EdgeServer(uvicorn.Server):
    """uvicorn without its own signal handling, for running beside other services."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def advertised_url(host: str, port: int) -> str:
    """The base URL others reach a server bound to host:port at: by this machine's name when
    it listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_edge(api: Any, host: str, port: int) -> tuple[EdgeServer, asyncio.Task[None], int]:
    """Serve `api` in this event loop; returns the server, its task and the bound port."""
    config = uvicorn.Config(
        api, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE
    )
    server = EdgeServer(config)
    task = asyncio.create_task(server.serve(), name="edge")
    while not server.started:
        if task.done():  # failed to start (port taken...): uvicorn logged why
            with contextlib.suppress(SystemExit):
                await task
            raise ConfigError(f"the edge could not start on {host}:{port} (see the log above)")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, task, int(bound)


async def stop_edge(server: EdgeServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


def edge_component(name: str, base_url: str, capabilities: list[str]) -> Component:
    """The registry entry of a process serving the edge at `base_url`."""
    port = int(base_url.rsplit(":", 1)[1])
    return Component(
        name=name,
        version=version("bus"),
        port=port,
        ports={"http": port},
        health_url=f"{base_url}/health",
        endpoints=[base_url, *(f"{base_url}{path}" for path in EDGE_PATHS)],
        capabilities=capabilities,
    )


async def serve_edge(
    settings: Settings, app: App, json_logs: bool, show_key: Callable[[str], None]
) -> None:
    """`bus edge`: the edge alone until a signal, then a graceful stop (exit status 0)."""
    from services.runtime import telemetry
    from services.runtime.lifecycle import until_signalled

    from .app import create_app

    instruments = telemetry.setup(f"{app.name}-edge", json_logs)
    try:
        url = settings.resolve_nats_url()
        # Connected first: unreachable NATS is one clear error now, not a failed start-up
        # later. This connection keeps the registration (with the replicas the settings ask
        # for, should it create the registry's bucket), and shows the edge's circuits.
        circuits = Circuits(settings.circuit_policy, observer=instruments.metrics)
        async with Bus(
            url,
            credentials=settings.credentials,
            name=f"edge-{app.name}-registry",
            replicas=settings.replicas,
            circuits=circuits,
        ) as bus:
            options = settings.edge_options() | {"circuits": circuits}
            api = create_app(app, url, metrics=instruments.metrics, **options)
            if api.state.dev_key:
                show_key(api.state.dev_key)
            async with until_signalled() as stop:
                server, task, port = await start_edge(api, settings.edge_host, settings.edge_port)
                edge_url = advertised_url(settings.edge_host, port)
                try:
                    async with Registration(
                        bus, edge_component(f"{app.name}-edge", edge_url, ["edge"])
                    ):
                        await stop.wait()
                finally:
                    await stop_edge(server, task)
    finally:
        instruments.flush()
