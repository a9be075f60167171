"""Component health as the registry's monitors see it: each registered instance with the age
of its last heartbeat, and the latest verdict on it, shared in a KV bucket.

A monitor (the edge's, `services/edge/monitor.py`) checks every instance `heartbeats` lists
and writes one `ComponentHealth` per instance to `bus_component_health`; anyone (other
edges, `bus components`, `bus status`) reads them back with `HealthRecords.read`. KV, not a
stream: a verdict is only worth its latest value, one key per instance, and the bucket's
TTL drops the verdicts of a monitor that stopped rather than keep showing them as current.

    records = HealthRecords(bus)
    await records.put([ComponentHealth(name="worker", instance="h-1", status="pass", ...)])
    [verdict] = await records.read("worker")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Literal

import msgspec
import nats.errors
from nats.js.kv import KeyValue

from ._client import Bus
from ._errors import BusError, BusTimeout, StreamError, StreamNotFound
from ._kv import ensure_bucket, kv_key
from ._reader import read_latest
from ._registry import Component, _registered, validate_name

BUCKET = "bus_component_health"
STREAM = f"KV_{BUCKET}"
DEFAULT_TTL = 30.0  # seconds a verdict is kept when no monitor renews it
_DELETED = {"DEL", "PURGE"}  # the KV-Operation of a tombstone

HealthStatus = Literal["pass", "warn", "fail"]


class Heartbeat(msgspec.Struct, frozen=True):
    """A registered instance and the seconds since the server stored its last heartbeat."""

    component: Component
    age: float

    @property
    def missing(self) -> bool:
        """Two heartbeats missed (one is sent every ttl/3): stopped, frozen or cut off."""
        return self.age > 2 * self.component.ttl / 3


async def heartbeats(bus: Bus) -> list[Heartbeat]:
    """Every registered instance, heartbeating or not (the registry keeps a silent one for
    a while), sorted by name and instance; `nats.micro` responders are not registered."""
    found = [Heartbeat(c, round(age, 3)) for c, age in await _registered(bus)]
    return sorted(found, key=lambda h: (h.component.name, h.component.instance))


class ComponentHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A monitor's verdict on one instance: pass, warn (it answers, but reports a problem
    or redirects) or fail (no heartbeat, no answer in time, or an error status)."""

    name: str
    instance: str
    status: HealthStatus
    reason: str = ""  # why, when not pass
    checked_at: str  # RFC 3339, the monitor's clock
    heartbeat_at: str = ""  # the instance's last heartbeat, its own clock
    heartbeat_age: float = 0.0  # seconds since the server stored it, at the check
    latency_ms: float | None = None  # of the health URL's answer, when it was asked
    health_url: str = ""
    checked_by: str = ""  # the monitor's instance
    interval: float = 0.0  # seconds between the monitor's checks

    @property
    def key(self) -> str:
        return kv_key(f"{self.name}.{self.instance}")  # the registry's key for the instance


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ComponentHealth).decode


class HealthRecords:
    """The latest verdict per instance in `bus_component_health` (made on first write with
    `ttl` and the bus's replicas; an existing bucket with a shorter TTL is given `ttl`)."""

    def __init__(self, bus: Bus, *, ttl: float = DEFAULT_TTL) -> None:
        self._bus = bus
        self.ttl = ttl
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def put(self, verdicts: Iterable[ComponentHealth]) -> None:
        """Write each verdict under its instance's key (concurrently: one round trip)."""
        verdicts = list(verdicts)
        if not verdicts:
            return  # nothing registered: no bucket made for it
        kv = await self._bucket()
        try:
            await asyncio.gather(*(kv.put(v.key, _encode(v)) for v in verdicts))
        except nats.errors.Error as exc:
            raise _failed(exc) from None

    async def read(self, name: str | None = None) -> list[ComponentHealth]:
        """The verdicts kept (only those on component `name`, if given), sorted by name and
        instance; none before a monitor first wrote."""
        if name is not None:
            validate_name(name)
        try:
            stored = await read_latest(self._bus.nc, STREAM)
        except StreamNotFound:
            return []
        found = []
        for message in stored.values():
            if message.headers.get("KV-Operation") in _DELETED:
                continue
            with contextlib.suppress(msgspec.DecodeError):  # written by something else
                verdict = _decode(message.data)
                if name is None or verdict.name == name:
                    found.append(verdict)
        return sorted(found, key=lambda v: (v.name, v.instance))

    async def by_key(self) -> dict[str, ComponentHealth]:
        """Every verdict kept, by its instance's registry key (`Component.key`)."""
        return {v.key: v for v in await self.read()}

    async def _bucket(self) -> KeyValue:
        async with self._opening:
            if self._kv is None:
                js = self._bus.js
                try:
                    kv = await ensure_bucket(js, BUCKET, ttl=self.ttl, replicas=self._bus.replicas)
                    config = (await js.stream_info(STREAM)).config
                    if (config.max_age or 0) < self.ttl:  # a monitor checking less often
                        config.max_age = self.ttl
                        await js.update_stream(config)
                except nats.errors.Error as exc:
                    raise _failed(exc) from None
                self._kv = kv
        return self._kv


def _failed(exc: nats.errors.Error) -> BusError:
    if isinstance(exc, nats.errors.TimeoutError):
        return BusTimeout(f"bucket {BUCKET!r}: NATS did not answer in time")
    return StreamError(f"bucket {BUCKET!r}: {exc}")
