"""The component registry: who is running, where, how to check its health, what it offers.

Each running component keeps an entry in the `bus_components` KV bucket, renewed every
third of its TTL; a clean stop deletes it at once. A component is *alive* while its last
heartbeat is younger than its TTL, and *silent* once two beats are missing: it stopped
without deregistering (crashed, frozen, cut off from NATS). The bucket keeps a silent
entry for RETAIN seconds, so the edge's `/health` can say what vanished, then drops it.
Heartbeat ages are measured from the time the server stored the beat, so components on
hosts with different clocks are judged alike. `nats.micro` responders are found by
`$SRV.INFO` and listed beside them, so request/reply services show up without registering.

    async with Registration(bus, Component(name="worker", version="1.0", ...)):
        ...   # listed by `await components(bus)` and `bus components`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import msgspec
import nats.errors
from nats.js.kv import KeyValue

from ._client import Bus
from ._errors import ConfigError, StreamError, StreamNotFound
from ._kv import ensure_bucket, kv_key
from ._reader import read_latest
from ._subjects import validate_token

BUCKET = "bus_components"
TTL = 10.0  # seconds a component counts as alive after its last heartbeat
RETAIN = 300.0  # seconds the bucket keeps an entry that stopped heartbeating
FIRST_BEAT_PATIENCE = 10.0  # seconds a first registration waits for a new bucket to answer
MICRO_WINDOW = 0.3  # seconds to gather $SRV.INFO answers
MAX_NAME = 128


class Component(msgspec.Struct, kw_only=True):
    MAX_NAME: ClassVar[int] = MAX_NAME
    """One running instance: enough for a person, a dashboard or a health monitor to find it.

    `health_url` answers 200 while the instance is fit to work and 503 when it is not;
    `ports` name what it listens on (`http`, `nats`...), `endpoints` its URLs and subjects.
    """

    name: str
    version: str = "0.0.0"
    instance: str = msgspec.field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    host: str = msgspec.field(default_factory=socket.gethostname)
    port: int | None = None  # the main one, when it has one
    ports: dict[str, int] = {}
    health_url: str = ""
    endpoints: list[str] = []
    capabilities: list[str] = []
    kind: str = "service"  # or "micro" for nats.micro responders, "nats-server"
    started_at: str = msgspec.field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    heartbeat_at: str = ""
    ttl: float = TTL  # it beats every ttl/3
    circuits: dict[str, str] = {}  # endpoint -> state, of those that failed lately (bus._breaker)

    @property
    def key(self) -> str:
        return kv_key(f"{self.name}.{self.instance}")


class Silent(msgspec.Struct, kw_only=True):
    """A registered instance whose heartbeat stopped without a deregistration."""

    component: Component
    silent_for: float  # seconds since its last heartbeat was stored


def validate_name(name: str) -> str:
    """A component name: one subject token (no dots, spaces or wildcards), at most 128 chars."""
    if len(name) > MAX_NAME:
        raise ConfigError(f"component name longer than {MAX_NAME} characters")
    validate_token(name, "component name")
    return name


class Registration:
    """Keeps one component registered while the context is open."""

    def __init__(self, bus: Bus, component: Component, ttl: float = TTL) -> None:
        validate_name(component.name)
        self._bus = bus
        self.component = component
        self.ttl = component.ttl = ttl
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        self._kv = await _bucket(self._bus)
        await self._first_beat()
        self._task = asyncio.create_task(
            self._heartbeats(), name=f"heartbeat {self.component.name}"
        )
        return self

    async def stop(self) -> None:
        """Stop heartbeating and deregister now (a crash leaves it silent, then to RETAIN)."""
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
        self.component.circuits = self._bus.circuits.snapshot()  # as of this beat
        await self._kv.put(self.component.key, msgspec.json.encode(self.component))

    async def _first_beat(self) -> None:
        """The first heartbeat, tried for a while: a bucket just made (or updated) on a
        cluster answers only once its replicas have a leader."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + FIRST_BEAT_PATIENCE
        while True:
            try:
                await self._beat()
                return
            except nats.errors.Error as exc:
                if loop.time() > give_up:
                    raise StreamError(f"registering {self.component.name}: {exc}") from None
            await asyncio.sleep(0.25)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(nats.errors.Error):  # NATS away: the next beat retries
                await self._beat()


async def _bucket(bus: Bus) -> KeyValue:
    """The registry's bucket; one made by an older version (entries gone at the TTL) is
    given RETAIN, so what stops heartbeating can still be reported."""
    kv = await ensure_bucket(bus.js, BUCKET, ttl=RETAIN, replicas=bus.replicas)
    try:
        info = await bus.js.stream_info(f"KV_{BUCKET}")
        if info.config.max_age != RETAIN:
            info.config.max_age = RETAIN
            await bus.js.update_stream(info.config)
    except nats.errors.Error as exc:
        raise StreamError(f"key-value bucket {BUCKET!r}: {exc}") from None
    return kv


async def components(bus: Bus, name: str | None = None) -> list[Component]:
    """Alive components plus `nats.micro` services (only those called `name`, if given),
    sorted by name and instance."""
    if name is not None:
        validate_name(name)
    alive = [c for c, age in await _registered(bus) if age <= c.ttl]
    found = [*alive, *await _micro_services(bus, name)]
    if name is not None:
        found = [c for c in found if c.name == name]
    return sorted(found, key=lambda c: (c.name, c.instance))


async def silent_components(bus: Bus, name: str | None = None) -> list[Silent]:
    """Registered instances with two heartbeats missing that did not deregister."""
    return sorted(
        (
            Silent(component=c, silent_for=round(age, 1))
            for c, age in await _registered(bus)
            if age > 2 * c.ttl / 3 and (name is None or c.name == name)
        ),
        key=lambda s: (s.component.name, s.component.instance),
    )


async def _registered(bus: Bus) -> list[tuple[Component, float]]:
    """Every entry with the seconds since the server stored its last heartbeat."""
    try:
        latest = await read_latest(bus.nc, f"KV_{BUCKET}")
    except StreamNotFound:
        return []
    decode = msgspec.json.Decoder(Component).decode
    now = datetime.now(UTC)
    found = []
    for message in latest.values():
        if not message.data:  # a delete marker
            continue
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            age = (now - datetime.fromisoformat(message.time)).total_seconds()
            found.append((decode(message.data), max(0.0, age)))
    return found


async def _micro_services(bus: Bus, name: str | None = None) -> list[Component]:
    inbox = bus.nc.new_inbox()
    answers: list[Any] = []

    async def collect(msg: Any) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(msg.data))

    sub = await bus.nc.subscribe(inbox, cb=collect)
    try:
        await bus.nc.publish("$SRV.INFO" + (f".{name}" if name else ""), b"", reply=inbox)
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
