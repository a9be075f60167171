"""Publishing rate per caller (API key name or token subject), held across edges: over it,
429 with `Retry-After`.

Each edge keeps a token bucket (the burst shape), and the budget of every one-second window
is shared through a NATS KV bucket: an edge leases a chunk of the window's budget with a
compare-and-set and spends it locally, so the hot path is a dictionary look-up and N edges
together stay within the rate (a leased, unspent chunk is lost, never doubled). Windows are
wall-clock seconds: edges need clocks in step (NTP)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time

from fastapi import HTTPException, Request

from bus import Bucket, BucketSpec, BusError

RATES = BucketSpec("edge_rates", ttl=10.0, description="the edges' shared publish budgets")
MAX_CALLERS = 10_000  # callers tracked before the idle ones are forgotten
CHUNKS = 10  # a lease is this fraction of the rate (at least one event)
LEASE_PATIENCE = 1.0  # seconds a lease may take before the local bucket alone decides


class _Spent(Exception):
    """The window's budget is gone."""


class TokenBuckets:
    """`rate` events per second per caller, with bursts up to `burst`; rate 0 means no limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; returns 0, or the seconds to wait when there are too few."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        if len(self._buckets) >= MAX_CALLERS:  # the idle ones are full again: forget them
            idle = now - self.burst / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if v[1] > idle}
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate
        self._buckets[key] = (tokens - cost, now)
        return 0.0


class PublishLimits:
    """The local bucket, then the shared window budget (once `bucket` is set: the edge's
    lifespan does it)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.local = TokenBuckets(rate)
        self.chunk = max(1, math.ceil(rate / CHUNKS))
        self.bucket: Bucket[int] | None = None
        self._leases: dict[str, tuple[int, int]] = {}  # caller -> (window, events left)

    async def take(self, who: str, cost: int = 1) -> float:
        """Take `cost` events; returns 0, or the seconds to wait."""
        wait = self.local.take(who, cost)
        if wait or not self.rate or self.bucket is None:
            return wait
        window = int(time.time())
        if self._left(who, window) < cost:
            granted = await self._lease(who, window, cost - self._left(who, window))
            if granted is None:
                return max(0.001, window + 1 - time.time())
            self._leases[who] = (window, self._left(who, window) + granted)
        left = self._left(who, window)
        if left < cost:  # another request of this caller spent it meanwhile
            return max(0.001, window + 1 - time.time())
        self._leases[who] = (window, left - cost)
        return 0.0

    def _left(self, who: str, window: int) -> int:
        at, left = self._leases.get(who, (window, 0))
        return left if at == window else 0

    async def _lease(self, who: str, window: int, need: int) -> int | None:
        """Events leased from the window's shared budget (None: spent). Should NATS fail, or
        not answer within LEASE_PATIENCE (it is down, or reconnecting), the local bucket
        alone limits: publishing is failing then anyway, and its own timeout is the one the
        caller waits for, not that plus a lease's."""
        assert self.bucket is not None
        if len(self._leases) >= MAX_CALLERS:
            self._leases = {k: v for k, v in self._leases.items() if v[0] == window}
        granted = 0

        def grant(used: int | None) -> int:
            nonlocal granted
            used = used or 0
            if used + need > self.rate:
                raise _Spent
            granted = min(max(need, self.chunk), math.floor(self.rate) - used)
            return used + granted

        key = f"{hashlib.sha256(who.encode()).hexdigest()[:20]}.{window}"
        try:
            async with asyncio.timeout(LEASE_PATIENCE):
                await self.bucket.modify(key, grant, attempts=20)
        except _Spent:
            return None
        except (BusError, TimeoutError):
            return need
        return granted


async def charge(limits: PublishLimits, who: str, cost: int = 1) -> None:
    """Refuse with 429 when the caller is over its rate (one per event)."""
    wait = await limits.take(who, cost)
    if wait:
        retry = str(max(1, math.ceil(wait)))
        raise HTTPException(
            429, "publishing too fast for this caller", headers={"Retry-After": retry}
        )


async def publish_limit(request: Request) -> None:
    """After `require("write")`, which names the caller."""
    await charge(request.app.state.publish_buckets, request.state.principal.name)
