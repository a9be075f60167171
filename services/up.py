"""`bus up`: the embedded server (unless BUS_NATS_URL), the app's handlers and projector.

The server's data lives under BUS_DATA_DIR and is reused across runs (`--fresh` wipes it);
its URLs are recorded in `<data dir>/server.json`, which the other verbs read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from importlib.metadata import version

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from bus import Bus, EmbeddedServer
from bus.app import App
from bus.registry import Component, Registration

from . import telemetry
from .edge import create_app
from .edge.server import start_edge, stop_edge
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


def _component(app: App, bus: Bus) -> Component:
    capabilities = [f"handler:{c.spec.durable}" for c in bus.consumers]
    capabilities += [f"projection:{name}" for name in app.projections]
    return Component(name=app.name, version=version("bus"), capabilities=capabilities)


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


def _panel(status: dict[str, object]) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_row("edge", str(status["edge_url"]))
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
    table.add_row("try", 'bus publish tasks.t1.created \'{"title": "hello"}\'')
    table.add_row("", "bus tail 'tasks.>' --from-seq 1")
    table.add_row("", "bus projections get task t1")
    return Panel(table, title=f"bus up · {status['app']}", subtitle="Ctrl-C stops")


async def run_up(settings: Settings, app: App, *, fresh: bool, as_json: bool) -> None:
    flush = telemetry.setup(app.name, json_logs=as_json)
    server = None if settings.nats_url else _start_server(settings, fresh)
    url = settings.nats_url or server.url  # type: ignore[union-attr]
    try:
        bus = Bus(
            url,
            name=f"bus-up-{app.name}",
            router=app.router,
            **settings.bus_options(app),
        )
        async with until_signalled() as stop, bus, Registration(bus, _component(app, bus)):
            projector = ProjectorService(bus, app)
            projecting = asyncio.create_task(projector.run(stop))
            api = create_app(app, url, **settings.edge_options())
            edge, serving, port = await start_edge(api, settings.edge_host, settings.edge_port)
            for name, view in api.state.views.items():  # reads learn of a batch as it is stored
                projector.projector.observe(name, view.applied)
            status = _status(app, url, server, bus)
            status["edge_url"] = f"http://{settings.edge_host}:{port}"
            status["dev_api_key"] = api.state.dev_key
            if server is not None:
                state = {
                    k: v for k, v in status.items() if k != "dev_api_key"
                }  # no secrets on disk
                state["nats_port"] = server.port
                settings.state_file.write_text(json.dumps(state))
            if as_json:
                print(json.dumps(status), flush=True)
            else:
                Console().print(_panel(status))
            await stop.wait()
            logging.getLogger("bus").info("stopping: draining handlers and the connection")
            await stop_edge(edge, serving)
            await projecting
    finally:
        flush()
        if server is not None:
            server.stop()
