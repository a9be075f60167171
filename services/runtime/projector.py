"""The projector service: runs an app's projections, one active instance per projection.

Each projection has a lease (`bus_leases`, key `projection.<name>`); the holder folds it and
answers rebuild requests on `bus.projector.rebuild.<name>`, the others stand by and take over
within the lease TTL when the holder stops renewing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from bus import App, Bus, BusError, Lease, Projector, Registration, Responder

from . import telemetry
from .lifecycle import until_signalled
from .probes import serve_probes
from .rebuild_requests import REBUILD_SUBJECT, RebuildAnswer, RebuildRequest
from .settings import Settings

log = logging.getLogger("bus.projector")


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ProjectorService:
    def __init__(self, bus: Bus, app: App, *, lease_ttl: float = 3.0) -> None:
        self.bus = bus
        self.projector = Projector(bus, app.projections.values())
        self.instance = instance_id()
        self.lease_ttl = lease_ttl
        self.leases = {
            n: Lease(bus, f"projection.{n}", self.instance, lease_ttl) for n in app.projections
        }
        self._rebuilds: dict[str, asyncio.Task[Any]] = {}
        self._responders: dict[str, Responder] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Hold what leases it can, fold what it holds, until `stop` is set."""
        try:
            while not stop.is_set():
                for name, lease in self.leases.items():
                    await self._tend(name, lease)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lease_ttl / 3):
                        await stop.wait()
        finally:
            for name in list(self._responders):
                await self._let_go(name)
            for lease in self.leases.values():
                await lease.release()

    async def _tend(self, name: str, lease: Lease) -> None:
        try:
            if lease.held:
                if not await lease.renew():
                    log.warning("lost the lease of projection %s; standing by", name)
                    await self._let_go(name)
                elif not self.projector.alive(name):  # fenced off: let it be taken again
                    await self._let_go(name)
                    await lease.release()
            elif await lease.acquire():
                log.info("running projection %s (instance %s)", name, self.instance)
                await self.projector.run(name)
                self._responders[name] = await self.bus.serve(
                    f"{REBUILD_SUBJECT}.{name}", self._rebuilder(name), service="projector"
                )
        except BusError as exc:
            log.warning("projection %s: %s", name, exc)

    async def _let_go(self, name: str) -> None:
        await self.projector.halt(name)
        responder = self._responders.pop(name, None)
        if responder is not None:
            await responder.stop()
        task = self._rebuilds.pop(name, None)
        if task is not None:
            task.cancel()

    def _rebuilder(self, name: str) -> Callable[[RebuildRequest], Awaitable[RebuildAnswer]]:
        """The responder to rebuild requests for `name`: starts one, unless one runs."""

        async def rebuild(request: RebuildRequest) -> RebuildAnswer:
            if name in self._rebuilds and not self._rebuilds[name].done():
                return RebuildAnswer(False, error=f"projection {name!r} is already rebuilding")
            task = asyncio.create_task(self.projector.rebuild(name))
            task.add_done_callback(lambda t: _log_rebuild(name, t))
            self._rebuilds[name] = task
            return RebuildAnswer(True, self.instance)

        return rebuild


def _log_rebuild(name: str, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("rebuild of %s failed: %s", name, task.exception())
    else:
        log.info("rebuild of %s done: generation %d", name, task.result().generation)


async def serve_projector(settings: Settings, app: App, json_logs: bool = False) -> None:
    """`bus projector`: only the projections (no handlers), until a signal."""
    component = f"{app.name}-projector"
    instruments = telemetry.setup(component, json_logs)
    url = settings.resolve_nats_url()
    bus = Bus(
        url,
        name=f"bus-projector-{app.name}",
        observer=instruments.metrics,
        **settings.bus_options(app),
    )
    capabilities = [f"projection:{name}" for name in app.projections]
    try:
        async with (
            until_signalled() as stop,
            serve_probes(
                bus, app, instruments.metrics, settings.metrics_host, settings.metrics_port
            ) as probes,
            bus,
            Registration(bus, probes.component(component, capabilities)) as registered,
        ):
            service = ProjectorService(bus, app)
            log.info(
                "projector %s for %s: %s; health at %s",
                service.instance,
                app.name,
                ", ".join(app.projections),
                registered.component.health_url,
            )
            await service.run(stop)
    finally:
        instruments.flush()
