"""The HTTP a worker or projector serves beside its work: `/livez` (the process answers),
`/readyz` (NATS connected, JetStream answers, the app's streams exist; 503 otherwise),
`/health` (the same checks as application/health+json) and `/metrics` (Prometheus).

Always served, so every process has a health URL for the registry, Docker and a monitor:
on BUS_METRICS_HOST:BUS_METRICS_PORT, or a free port on that host when the port is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import version

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bus import App, Bus, Component
from observability.metrics import Metrics
from services.edge.server import advertised_url, start_edge, stop_edge

from .checks import connection_checks
from .telemetry import exposition

FINAL_SCRAPE_WAIT = 6.0  # seconds: deploy/prometheus scrapes every 5 s


class Probes:
    """Where the probes answer, once serving."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return advertised_url(self.host, self.port)

    def component(self, name: str, capabilities: list[str]) -> Component:
        """This process's registry entry: the probes are its health URL and endpoints."""
        return Component(
            name=name,
            version=version("bus"),
            port=self.port,
            ports={"http": self.port},
            health_url=f"{self.url}/health",
            endpoints=[f"{self.url}{path}" for path in ("/livez", "/readyz", "/metrics")],
            capabilities=capabilities,
        )


@contextlib.asynccontextmanager
async def serve_probes(
    bus: Bus, app: App, metrics: Metrics, host: str, port: int | None
) -> AsyncIterator[Probes]:
    """Serve the probes on host:port (None: a free port) while the context is open.

    Enter it before the Bus and leave it after: /livez answers from the start, and what
    handlers finishing during the drain count is still served. Prometheus pulls, so on the
    way out the counters wait for one more scrape (up to FINAL_SCRAPE_WAIT) rather than
    vanish with the process; a process nobody has scraped does not wait.
    """
    scraped = asyncio.Event()

    async def scrape(request: Request) -> Response:
        response = await exposition(bus, app, metrics, request.headers.get("accept"))
        scraped.set()  # in the same step as the rendering: it saw every count made before
        return response

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "pass"})

    async def readyz(request: Request) -> Response:
        status = (await connection_checks(bus, app)).status
        return JSONResponse({"status": status}, status_code=503 if status == "fail" else 200)

    async def health(request: Request) -> Response:
        found = await connection_checks(bus, app)
        body = {"status": found.status, "serviceId": app.name, "checks": found}
        code = 503 if found.status == "fail" else 200
        return JSONResponse(body, status_code=code, media_type="application/health+json")

    routes = [
        Route("/metrics", scrape),
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/health", health),
    ]
    server, task, bound = await start_edge(Starlette(routes=routes), host, port or 0)
    try:
        yield Probes(host, bound)
        if not scraped.is_set():
            return
        scraped.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_SCRAPE_WAIT):
                await scraped.wait()
    finally:
        await stop_edge(server, task)
