"""A token bucket per API key on publishing: over the rate, 429 with `Retry-After`."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException, Request


class TokenBuckets:
    """`rate` events per second per key, with bursts up to `burst`; rate 0 means no limit.

    Keys come from the configured key set, so the table cannot grow without bound."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; returns 0, or the seconds to wait when there are too few."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate
        self._buckets[key] = (tokens - cost, now)
        return 0.0


def charge(buckets: TokenBuckets, authorization: str | None, cost: int = 1) -> None:
    """Refuse with 429 when the caller's bucket is empty (one token per event)."""
    wait = buckets.take(authorization or "", cost)
    if wait:
        retry = str(max(1, math.ceil(wait)))
        raise HTTPException(429, "publishing too fast for this key", headers={"Retry-After": retry})


async def publish_limit(request: Request) -> None:
    charge(request.app.state.publish_buckets, request.headers.get("authorization"))
