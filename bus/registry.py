"""The component registry: who is running, where, and what it offers.

Each running component keeps an entry in the `bus_components` KV bucket, renewed every
third of the TTL; the bucket's TTL removes an entry whose process stopped renewing, and a
clean stop deletes it at once. `nats.micro` responders are found by `$SRV.INFO` and listed
beside them, so request/reply services show up without registering twice.

    async with Registration(bus, Component(name="worker", version="1.0", ...)):
        ...   # listed by `await components(bus)` and `bus components`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime
from typing import Any, Self

import msgspec
import nats.errors
from nats.js.kv import KeyValue

from .client import Bus
from .errors import StreamNotFound
from .kv import ensure_bucket, kv_key
from .reader import read_messages

BUCKET = "bus_components"
TTL = 10.0  # seconds an entry outlives its last heartbeat
MICRO_WINDOW = 0.3  # seconds to gather $SRV.INFO answers


class Component(msgspec.Struct, kw_only=True):
    name: str
    version: str = "0.0.0"
    instance: str = msgspec.field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    host: str = msgspec.field(default_factory=socket.gethostname)
    port: int | None = None
    endpoints: list[str] = []
    capabilities: list[str] = []
    kind: str = "service"  # or "micro" for nats.micro responders
    started_at: str = msgspec.field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    heartbeat_at: str = ""

    @property
    def key(self) -> str:
        return kv_key(f"{self.name}.{self.instance}")


class Registration:
    """Keeps one component registered while the context is open."""

    def __init__(self, bus: Bus, component: Component, ttl: float = TTL) -> None:
        self._bus = bus
        self.component = component
        self.ttl = ttl
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        self._kv = await ensure_bucket(
            self._bus.js, BUCKET, ttl=self.ttl, replicas=self._bus.replicas
        )
        await self._beat()
        self._task = asyncio.create_task(
            self._heartbeats(), name=f"heartbeat {self.component.name}"
        )
        return self

    async def stop(self) -> None:
        """Stop heartbeating and deregister now (a crash leaves it to the TTL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._kv.delete(self.component.key)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _beat(self) -> None:
        assert self._kv is not None
        self.component.heartbeat_at = datetime.now(UTC).isoformat(timespec="seconds")
        await self._kv.put(self.component.key, msgspec.json.encode(self.component))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(nats.errors.Error):  # NATS away: the next beat retries
                await self._beat()


async def components(bus: Bus) -> list[Component]:
    """Registered components plus `nats.micro` services, sorted by name."""
    found = [*await _registered(bus), *await _micro_services(bus)]
    return sorted(found, key=lambda c: (c.name, c.instance))


async def _registered(bus: Bus) -> list[Component]:
    latest: dict[str, bytes] = {}
    next_seq = 1
    while True:
        try:
            page = await read_messages(bus.nc, f"KV_{BUCKET}", next_seq, 1000)
        except StreamNotFound:
            return []
        for message in page:
            latest[message.subject] = message.data  # empty for a delete marker
        if len(page) < 1000:
            break
        next_seq = page[-1].seq + 1
    decode = msgspec.json.Decoder(Component).decode
    return [decode(data) for data in latest.values() if data]


async def _micro_services(bus: Bus) -> list[Component]:
    inbox = bus.nc.new_inbox()
    answers: list[Any] = []

    async def collect(msg: Any) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(msg.data))

    sub = await bus.nc.subscribe(inbox, cb=collect)
    try:
        await bus.nc.publish("$SRV.INFO", b"", reply=inbox)
        await asyncio.sleep(MICRO_WINDOW)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return [
        Component(
            name=info.get("name", "?"),
            version=info.get("version", "0.0.0"),
            instance=info.get("id", "?"),
            host="",
            endpoints=[e.get("subject", "") for e in info.get("endpoints") or []],
            capabilities=["request-reply"],
            kind="micro",
            started_at="",
        )
        for info in answers
        if isinstance(info, dict)
    ]
