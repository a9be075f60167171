"""Leases: which instance runs something now. A KV entry that expires unless renewed, so
when its holder dies another instance takes over within the TTL.

    lease = Lease(bus, "projection.task", holder=instance_id, ttl=3.0)
    if await lease.acquire(): ...       # then `await lease.renew()` every ttl/3
"""

from __future__ import annotations

import contextlib

import nats.errors
from nats.js.kv import KeyValue

from ._client import Bus
from ._kv import ensure_bucket, kv_key

BUCKET = "bus_leases"


class Lease:
    def __init__(self, bus: Bus, name: str, holder: str, ttl: float = 3.0) -> None:
        self._bus = bus
        self.key = kv_key(name)
        self.holder = holder
        self.ttl = ttl
        self._revision = 0
        self._kv: KeyValue | None = None

    @property
    def held(self) -> bool:
        return self._revision > 0

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await ensure_bucket(
                self._bus.js, BUCKET, ttl=self.ttl, replicas=self._bus.replicas
            )
        return self._kv

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (or renew it if we do)."""
        if self.held:
            return await self.renew()
        try:
            self._revision = await (await self._bucket()).create(self.key, self.holder.encode())
        except nats.errors.Error:  # held by another instance, or NATS away
            return False
        return True

    async def renew(self) -> bool:
        """Extend the lease; False means it was lost (expired and taken, or NATS away)."""
        try:
            kv = await self._bucket()
            self._revision = await kv.update(self.key, self.holder.encode(), last=self._revision)
        except nats.errors.Error:
            self._revision = 0
            return False
        return True

    async def release(self) -> None:
        if self.held:
            with contextlib.suppress(nats.errors.Error):
                await (await self._bucket()).delete(self.key, last=self._revision)
            self._revision = 0
