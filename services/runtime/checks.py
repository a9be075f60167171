"""Health checks every process shares, in the shape of the IETF health+json draft:
`{name: [{status: pass|warn|fail, observedValue, observedUnit, output, time}]}`.

The edge (`/health`, `/readyz`) and the worker's and projector's own HTTP (`services.runtime.probes`)
ask the same questions: is NATS connected, does JetStream answer (within READY_TIMEOUT, so a
frozen server fails the check instead of hanging it), do the app's streams exist.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from bus import App, Bus, BusError

READY_TIMEOUT = 2.0  # seconds JetStream gets to answer: Docker's health check allows 3


class Checks(dict[str, list[dict[str, Any]]]):
    """Check results by name; `status` is the worst of them."""

    def __init__(self) -> None:
        super().__init__()
        self.now = datetime.now(UTC).isoformat(timespec="seconds")

    def add(
        self, name: str, status: str, value: Any = None, unit: str = "", output: str = ""
    ) -> None:
        entry: dict[str, Any] = {"status": status, "time": self.now}
        if value is not None:
            entry |= {"observedValue": value, "observedUnit": unit}
        if output:
            entry["output"] = output
        self.setdefault(name, []).append(entry)

    def passed(self, name: str) -> bool:
        return any(entry["status"] == "pass" for entry in self.get(name, []))

    @property
    def status(self) -> str:
        statuses = {entry["status"] for entries in self.values() for entry in entries}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


async def connection_checks(bus: Bus, app: App) -> Checks:
    """NATS connected, JetStream answering, each of the app's streams there."""
    found = Checks()
    found.add("nats:connected", "pass" if bus.connected else "fail", bus.connected, "boolean")
    if not bus.connected:
        return found
    started = time.perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            summaries = {s.name for s in await bus.streams.list()}
    except TimeoutError:
        found.add("jetstream:responseTime", "fail", output=f"no answer in {READY_TIMEOUT:g} s")
        return found
    except BusError as exc:
        found.add("jetstream:responseTime", "fail", output=str(exc))
        return found
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    found.add("jetstream:responseTime", "pass", elapsed, "ms")
    for spec in app.streams:
        exists = spec.name in summaries
        found.add(f"stream:{spec.name}", "pass" if exists else "fail", exists, "boolean")
    return found
