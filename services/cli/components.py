"""`bus components`: every running instance, and those whose heartbeat stopped, with the
health monitor's last verdict (pass/warn/fail, when it checked, the last heartbeat), as
`GET /api/v1/components` shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from bus import ComponentHealth

COLOURS = {"pass": "green", "warn": "yellow", "fail": "red"}


def ago(stamp: str, now: datetime | None = None) -> str:
    """How long ago an RFC 3339 time was ("12 s ago"; "-" when there is none)."""
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    return f"{max(seconds, 0):.0f} s ago"


def health_word(verdict: ComponentHealth | None) -> str:
    """The verdict as a word in its colour (word and colour: colour-blind safe)."""
    if verdict is None:
        return "unchecked"
    return f"[{COLOURS[verdict.status]}]{verdict.status}[/]"


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "name", "kind", "instance", "health", "last check", "last heartbeat", "reason / offers"
    )
    for row in rows:
        verdict = row["health"]
        checked = ago(verdict.checked_at) if verdict else "-"
        reason = verdict.reason if verdict and verdict.status != "pass" else ""
        offers = ", ".join(row["capabilities"] or row["endpoints"])
        table.add_row(
            row["name"],
            row["kind"],
            row["instance"],
            health_word(verdict),
            checked,
            ago(row["heartbeat_at"]),
            reason or offers,
        )
    return table
