"""`bus up`: the embedded server (unless BUS_NATS_URL), the app's handlers and projector.

The server's data lives under BUS_DATA_DIR and is reused across runs (`--fresh` wipes it);
its URLs and the app it runs are recorded in `<data dir>/server.json`, which the other
verbs read. It registers itself (edge, handlers, projections) and the embedded nats-server
as components, each with its health URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from bus import App, Bus, Circuits, Component, EmbeddedServer, Registration
from services.edge import create_app
from services.edge.server import advertised_url, edge_component, start_edge, stop_edge

from . import telemetry
from .examples import try_commands
from .lifecycle import until_signalled
from .projector import ProjectorService
from .settings import Settings


def _start_server(settings: Settings, fresh: bool) -> EmbeddedServer:
    store = settings.data_dir / "nats"
    if fresh:
        shutil.rmtree(store, ignore_errors=True)
    previous = 0
    with contextlib.suppress(OSError, ValueError, KeyError):  # reuse last run's port
        previous = int(json.loads(settings.state_file.read_text())["nats_port"])
    server = EmbeddedServer(store_dir=store, port=previous)
    try:
        return server.start()
    except Exception:
        if not previous:
            raise
        return EmbeddedServer(store_dir=store).start()  # that port is taken now


def _nats_component(server: EmbeddedServer, bus: Bus) -> Component:
    """The embedded nats-server, a process `bus up` runs: its health URL is its /healthz."""
    return Component(
        name="nats-server",
        kind="nats-server",
        version=bus.server_version,
        instance=f"{socket.gethostname()}-{server.pid}",
        port=server.port,
        ports={"client": server.port, "monitor": server.monitor_port or 0},
        health_url=f"{server.monitor_url}/healthz",
        endpoints=[server.url, f"{server.monitor_url}/varz"],
    )


def _status(app: App, url: str, server: EmbeddedServer | None, bus: Bus) -> dict[str, object]:
    return {
        "app": app.name,
        "nats_url": bus.display_urls,
        "nats_monitor_url": server.monitor_url if server else None,
        "embedded": server is not None,
        "streams": [s.name for s in app.streams],
        "handlers": [c.spec.durable for c in bus.consumers],
        "projections": sorted(app.projections),
        "pid": os.getpid(),
    }


def _panel(status: dict[str, object], app: App) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_row("edge", str(status["edge_url"]))
    table.add_row("console", f"{status['edge_url']}/ui/")
    table.add_row("OpenAPI docs", f"{status['edge_url']}/docs")
    table.add_row("health", f"{status['edge_url']}/health")
    table.add_row("MCP", f"{status['edge_url']}/mcp")
    table.add_row("metrics", f"{status['edge_url']}/metrics")
    if status.get("dev_api_key"):
        table.add_row("dev API key", str(status["dev_api_key"]))
    table.add_row("NATS", str(status["nats_url"]))
    if status["nats_monitor_url"]:
        table.add_row("NATS monitoring", f"{status['nats_monitor_url']}/varz")
    table.add_row("streams", ", ".join(status["streams"]) or "-")  # type: ignore[arg-type]
    table.add_row("handlers", ", ".join(status["handlers"]) or "-")  # type: ignore[arg-type]
    table.add_row("projections", ", ".join(status["projections"]) or "-")  # type: ignore[arg-type]
    for i, command in enumerate(try_commands(app)):
        table.add_row("try" if i == 0 else "", command)
    return Panel(table, title=f"bus up · {status['app']}", subtitle="Ctrl-C stops")


async def run_up(
    settings: Settings, app: App, *, fresh: bool, as_json: bool, app_ref: str, app_dir: Path
) -> None:
    """Everything for `app` in this process until a signal; `app_ref` and `app_dir` are
    recorded so the other verbs run the same app without being told."""
    instruments = telemetry.setup(app.name, json_logs=as_json)
    server = None if settings.nats_url else _start_server(settings, fresh)
    url = settings.nats_url or server.url  # type: ignore[union-attr]
    # One circuit table for the handlers' requests and the edge's: its registry entry shows it.
    circuits = Circuits(settings.circuit_policy, observer=instruments.metrics)
    try:
        bus = Bus(
            url,
            name=f"bus-up-{app.name}",
            router=app.router,
            observer=instruments.metrics,
            **settings.bus_options(app) | {"circuits": circuits},
        )
        async with until_signalled() as stop, bus, contextlib.AsyncExitStack() as registered:
            projector = ProjectorService(bus, app)
            projecting = asyncio.create_task(projector.run(stop))
            options = settings.edge_options() | {"circuits": circuits}
            api = create_app(app, url, metrics=instruments.metrics, **options)
            edge, serving, port = await start_edge(api, settings.edge_host, settings.edge_port)
            for name, view in api.state.views.items():  # reads learn of a batch as it is stored
                projector.projector.observe(name, view.applied)
            edge_url = advertised_url(settings.edge_host, port)
            capabilities = ["edge", *(f"handler:{c.spec.durable}" for c in bus.consumers)]
            capabilities += [f"projection:{name}" for name in app.projections]
            capabilities += [f"responder:{r.subject}" for r in app.router.responders]
            await registered.enter_async_context(
                Registration(bus, edge_component(app.name, edge_url, capabilities))
            )
            if server is not None:
                await registered.enter_async_context(
                    Registration(bus, _nats_component(server, bus))
                )
            status = _status(app, url, server, bus)
            status["edge_url"] = f"http://{settings.edge_host}:{port}"
            status["dev_api_key"] = api.state.dev_key
            state = {k: v for k, v in status.items() if k != "dev_api_key"}  # no secrets on disk
            state |= {"app_ref": app_ref, "app_dir": str(app_dir)}
            if server is None:
                del state["nats_url"]  # the verbs take BUS_NATS_URL (with its credentials)
            else:
                state["nats_port"] = server.port
            settings.state_file.parent.mkdir(parents=True, exist_ok=True)
            settings.state_file.write_text(json.dumps(state))
            if as_json:
                print(json.dumps(status), flush=True)
            else:
                Console().print(_panel(status, app))
            await stop.wait()
            logging.getLogger("bus").info("stopping: draining handlers and the connection")
            await registered.aclose()
            await stop_edge(edge, serving)
            await projecting
    finally:
        instruments.flush()
        if server is not None:
            server.stop()
