"""`bus bench`'s last word: each target of the performance issue, its figure and verdict."""

from __future__ import annotations

import msgspec
from rich.console import Console
from rich.table import Table


class Verdict(msgspec.Struct):
    scenario: str
    measure: str
    figure: str  # as measured, with its unit ("1.62x", "2.9 ms")
    target: str  # "" where the harness measures without a target
    met: bool | None


def at_least(scenario: str, measure: str, value: float, target: float, unit: str) -> Verdict:
    """A figure that must reach `target` (ratios, rates)."""
    return Verdict(scenario, measure, _text(value, unit), f">= {_text(target, unit)}",
                   value >= target)  # fmt: skip


def at_most(scenario: str, measure: str, value: float, target: float, unit: str) -> Verdict:
    """A figure that must stay within `target` (latencies, memory)."""
    return Verdict(scenario, measure, _text(value, unit), f"<= {_text(target, unit)}",
                   value <= target)  # fmt: skip


def _text(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def show(verdicts: list[Verdict], as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode({"summary": verdicts}).decode())
        return
    table = Table("scenario", "measure", "figure", "target", "", title="summary")
    for v in verdicts:
        mark = "" if v.met is None else ("[green]ok[/]" if v.met else "[red]missed[/]")
        table.add_row(v.scenario, v.measure, v.figure, v.target, mark)
    Console().print(table)
