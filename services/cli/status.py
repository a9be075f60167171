"""`bus status`: the whole system at a glance, so one command answers "is it working?".

Server, streams, durable consumers with what they still owe, projections with their lag and
the registered components with the edge's last health verdict on each (and the verdicts on
instances no longer running) and the request circuits each holds (as of its last heartbeat:
the breakers live in the calling processes); KV and object-store streams are internal and
left out, but for the app's own buckets (shared state).
"""

from __future__ import annotations

from typing import Any

import msgspec
from rich.table import Table

from bus import (
    App,
    Bus,
    Component,
    ComponentHealth,
    HealthRecords,
    ProjectionStatus,
    ProjectionView,
    StreamError,
    StreamSummary,
    Workflows,
    components,
)

from .components import ago, health_word

INTERNAL = ("KV_", "OBJ_")


class Server(msgspec.Struct):
    url: str
    version: str
    jetstream: bool


class ConsumerState(msgspec.Struct):
    stream: str
    name: str
    pending: int  # stored messages not yet delivered
    ack_pending: int  # delivered, not yet acknowledged


class Status(msgspec.Struct):
    server: Server
    streams: list[StreamSummary]
    consumers: list[ConsumerState]
    projections: list[ProjectionStatus]
    components: list[Component]
    workflows: dict[str, dict[str, Any]] = {}  # runs and steps by status, per workflow
    health: list[ComponentHealth] = []


async def collect(bus: Bus, app: App) -> Status:
    try:
        all_streams = await bus.streams.list()
        jetstream = True
    except StreamError:
        all_streams, jetstream = [], False
    server = Server(url=bus.display_urls, version=bus.server_version, jetstream=jetstream)
    streams = [
        s for s in all_streams if not s.name.startswith(INTERNAL) or s.name[3:] in app.buckets
    ]
    consumers = [
        ConsumerState(s.name, c.name, c.pending, c.ack_pending)
        for s in streams
        for c in await bus.streams.consumers(s.name)
        if c.durable
    ]
    projections = [await ProjectionView(bus, p).status() for p in app.projections.values()]
    runs = await Workflows(bus, app).counts() if app.workflows else {}
    found, health = await components(bus), await HealthRecords(bus).read()
    return Status(server, streams, consumers, projections, found, workflows=runs, health=health)


def render(status: Status) -> Table:
    """One table, a section per part, so the eye finds a problem without scrolling."""
    table = Table("", "name", "state", title="bus status")
    s = status.server
    table.add_row(
        "server",
        s.url,
        f"nats-server {s.version}, JetStream {'ok' if s.jetstream else 'UNREACHABLE'}",
    )
    table.add_section()
    for st in status.streams:
        table.add_row("stream", st.name, f"{st.messages} messages, last #{st.last_seq}")
    table.add_section()
    for c in status.consumers:
        table.add_row(
            "consumer", f"{c.stream}/{c.name}", f"pending {c.pending}, ack pending {c.ack_pending}"
        )
    table.add_section()
    for p in status.projections:
        failures = f", {p.failures} failures" if p.failures else ""
        table.add_row("projection", p.name, f"position {p.position}, lag {p.lag}{failures}")
    table.add_section()
    for name, counts in status.workflows.items():
        table.add_row("workflow", name, "runs: " + _by_status(counts["runs"]))
        for step, by_status in counts["steps"].items():
            table.add_row("", f"  {step}", _by_status(by_status))
    table.add_section()
    verdicts = {v.key: v for v in status.health}
    for comp in status.components:
        verdict = verdicts.pop(comp.key, None)
        table.add_row(
            "component",
            comp.name,
            f"{comp.kind} {comp.instance}, heartbeat {comp.heartbeat_at or '-'}, "
            f"{health_word(verdict)}{_checked(verdict)}",
        )
        for endpoint, state in sorted(comp.circuits.items()):
            table.add_row("circuit", f"{comp.name} → {endpoint}", state.replace("_", "-"))
    for gone in verdicts.values():  # instances the registry no longer lists as running
        table.add_row(
            "component", gone.name, f"{gone.instance}, {health_word(gone)}{_checked(gone)}"
        )
    return table


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _checked(verdict: ComponentHealth | None) -> str:
    if verdict is None:
        return ""
    reason = f": {verdict.reason}" if verdict.status != "pass" and verdict.reason else ""
    return f" (checked {ago(verdict.checked_at)}){reason}"
