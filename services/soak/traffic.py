"""`bus soak`'s traffic: demo tasks created through the edge at a steady rate, a few asking
to fail (some often enough to be dead-lettered), and what the edge acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
from collections import Counter

import httpx

from services.demo.traffic import FAIL_TIMES, FAIL_WEIGHTS

IN_FLIGHT = 64  # HTTP requests at once at most


class Driver:
    """Creates tasks through the edge at `rate` per second; remembers what was acknowledged."""

    def __init__(self, client: httpx.AsyncClient, rate: float) -> None:
        self.client, self.rate = client, rate
        self.published = 0
        self.acked: dict[str, str] = {}  # task id -> event id, for every 201
        self.fail_times: dict[str, int] = {}
        self.refused: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(IN_FLIGHT)
        started = loop.time()
        async with asyncio.TaskGroup() as group:
            for n in itertools.count():
                await slots.acquire()
                if stop.is_set():
                    break
                group.create_task(self._create(n, slots))
                with contextlib.suppress(TimeoutError):
                    delay = started + (n + 1) / self.rate - loop.time()
                    await asyncio.wait_for(stop.wait(), max(0.0, delay))

    async def _create(self, n: int, slots: asyncio.Semaphore) -> None:
        task = f"soak{n}-{secrets.token_hex(3)}"
        fail_times = random.choices(FAIL_TIMES, FAIL_WEIGHTS)[0]
        self.fail_times[task] = fail_times
        self.published += 1
        try:
            answer = await self.client.post(
                f"/api/v1/events/tasks.{task}.created",
                json={"title": f"soak task {n}", "fail_times": fail_times},
            )
            if answer.status_code == 201:
                self.acked[task] = answer.json()["id"]
            else:
                self.refused[f"HTTP {answer.status_code}"] += 1
        except httpx.HTTPError as exc:
            self.refused[type(exc).__name__] += 1
        finally:
            slots.release()
