"""`bus worker --app module:attr`: the app's handlers alone (no edge, no projections).

Run as many as the load needs: durable consumers share the work. Serves its probes
(`/livez`, `/readyz`, `/health`, `/metrics`: services.runtime.probes) and registers in the component
registry with them, a `handler:<durable>` capability per handler and a `responder:<subject>`
one per responder (which it also answers on: `app.serve`); SIGTERM drains
in-flight handlers before the connection closes (unfinished messages are redelivered
elsewhere).
"""

from __future__ import annotations

import logging

from bus import App, Bus, Registration

from . import telemetry
from .lifecycle import until_signalled
from .probes import serve_probes
from .settings import Settings

log = logging.getLogger("bus.worker")


async def serve_worker(settings: Settings, app: App, json_logs: bool = False) -> None:
    component = f"{app.name}-worker"
    instruments = telemetry.setup(component, json_logs)
    bus = Bus(
        settings.resolve_nats_url(),
        name=f"bus-worker-{app.name}",
        router=app.router,
        observer=instruments.metrics,
        **settings.bus_options(app),
    )
    try:
        async with (
            until_signalled() as stop,
            serve_probes(
                bus, app, instruments.metrics, settings.metrics_host, settings.metrics_port
            ) as probes,
            bus,
        ):
            offers = [f"handler:{c.spec.durable}" for c in bus.consumers]
            offers += [f"responder:{r.subject}" for r in app.router.responders]
            me = probes.component(component, offers)
            async with Registration(bus, me):
                log.info(
                    "worker for %s: %s; health at %s",
                    app.name,
                    ", ".join(me.capabilities) or "no handlers",
                    me.health_url,
                )
                await stop.wait()
                log.info("stopping: draining handlers and the connection")
    finally:
        instruments.flush()
