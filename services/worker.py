"""`bus worker --app module:attr`: the app's handlers alone (no edge, no projections).

Run as many as the load needs: durable consumers share the work. Registers in the component
registry with a `handler:<durable>` capability per handler; SIGTERM drains in-flight
handlers before the connection closes (unfinished messages are redelivered elsewhere).
"""

from __future__ import annotations

import logging
from importlib.metadata import version

from bus import Bus
from bus.app import App
from bus.registry import Component, Registration

from . import telemetry
from .lifecycle import until_signalled
from .settings import Settings

log = logging.getLogger("bus.worker")


async def serve_worker(settings: Settings, app: App, json_logs: bool = False) -> None:
    component = f"{app.name}-worker"
    flush = telemetry.setup(component, json_logs)
    bus = Bus(
        settings.resolve_nats_url(),
        name=f"bus-worker-{app.name}",
        router=app.router,
        **settings.bus_options(app),
    )
    try:
        async with (
            until_signalled() as stop,
            telemetry.serve_metrics(bus, app, settings.metrics_host, settings.metrics_port),
            bus,
        ):
            me = Component(
                name=component,
                version=version("bus"),
                capabilities=[f"handler:{c.spec.durable}" for c in bus.consumers],
            )
            async with Registration(bus, me):
                log.info("worker for %s: %s", app.name, ", ".join(me.capabilities) or "no handlers")
                await stop.wait()
                log.info("stopping: draining handlers and the connection")
    finally:
        flush()
