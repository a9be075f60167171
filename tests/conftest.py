"""Test settings (temporary directories in memory; Hypothesis without wall-clock limits: the
machine is shared and noisy) and the fixtures shared by the edge, MCP, tracing, shutdown and
console tests."""

import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from bus import Bus, Projector
from services.demo import app
from services.edge import create_app
from tests.edge import KEYS, serve
from tests.otlp import Receiver

SCREENSHOTS = Path(__file__).resolve().parents[1] / ".bus" / "screenshots"
# Temporary directories (and so every test's nats-server store) in memory when there is room:
# the servers fsync each write (sync_interval "always", as bus runs them): 12,000 publishes took
# 20 s on this machine's disk, 3 s on tmpfs. A kill -9 loses nothing more either way: the
# kernel keeps what a dead process wrote. (A container's 64 MB /dev/shm is too small: disk then.)
MEMORY = Path("/dev/shm")
if MEMORY.is_dir() and os.access(MEMORY, os.W_OK):
    room = os.statvfs(MEMORY)
    if room.f_bavail * room.f_frsize >= 2 << 30:
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(MEMORY))

settings.register_profile(
    "bus", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("bus")


@pytest.fixture
async def tasks(nats_url: str) -> AsyncIterator[Bus]:
    """A bus on the demo domain with its projections running."""
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        Projector(bus, app.projections.values()),
    ):
        yield bus


@pytest.fixture
async def edge(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The demo edge under uvicorn, with a 64 KiB body limit."""
    async for client in serve(create_app(app, nats_url, api_keys=KEYS, body_limit=64 * 1024)):
        yield client


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    """The session's one headless chromium, shared by every console test."""
    from tests import browser  # selenium: only for the sessions that run the console tests

    yield from browser.chromium()


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where the console's screenshots go: $BUS_CONSOLE_SCREENSHOTS, else the checkout's
    .bus/screenshots (gitignored; `.ci/run` says where they are)."""
    chosen = Path(os.environ.get("BUS_CONSOLE_SCREENSHOTS") or SCREENSHOTS)
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP trace receiver serving on a thread for the test's duration."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
