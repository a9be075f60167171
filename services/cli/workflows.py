"""`bus workflows list|runs|start|get|cancel`: an app's workflows from the command line.

`get` and `start --wait` fold the run's own events (no projector needed); `--wait` prints
each step as it finishes and exits 1 unless the run completed. `runs` reads the run
projection (`bus up` or `bus projector` keep it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
import msgspec
from rich.table import Table

from bus import RunView, Workflows, load_app

from .console import app_option, connect, console, emit, json_option, run

STATUSES = click.Choice(["running", "completed", "failed", "cancelled"])


@click.group()
def workflows() -> None:
    """Workflows: definitions, runs; start, follow, cancel."""


@workflows.command("list")
@app_option
@json_option
@run
async def list_definitions(app_ref: str, as_json: bool) -> None:
    """The app's workflows: their steps, and their runs by status."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        runs = Workflows(bus, app)
        counts = await runs.counts() if app.workflows else {}
        found = []
        for d in runs.definitions():
            c = counts.get(d["name"], {"runs": {}, "steps": {}})
            found.append(d | {"runs": c["runs"], "step_counts": c["steps"]})
    table = Table("workflow", "steps", "runs")
    for d in found:
        steps = ", ".join(
            s["name"] + (f" <- {'+'.join(s['depends_on'])}" if s["depends_on"] else "")
            for s in d["steps"]
        )
        table.add_row(d["name"], steps, ", ".join(f"{k} {v}" for k, v in d["runs"].items()))
    emit(as_json, found, table if found else f"no workflows in {app_ref}")


@workflows.command("runs")
@click.argument("name")
@click.option("--status", type=STATUSES, help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after this run id (the last page's cursor).")
@app_option
@json_option
@run
async def list_runs(
    name: str, status: str | None, limit: int, cursor: str | None, app_ref: str, as_json: bool
) -> None:
    """Runs of workflow NAME, oldest first."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        page, next_cursor = await Workflows(bus, app).list(name, status, limit, cursor)
    table = Table("run", "status", "started", "ended", "error")
    for r in page:
        table.add_row(r.run_id, r.status, r.started_at or "-", r.ended_at or "-", r.error or "")
    if next_cursor:
        table.caption = f"more: --cursor {next_cursor}"
    emit(as_json, {"items": [r.public() for r in page], "cursor": next_cursor}, table)


@workflows.command("start")
@click.argument("name")
@click.argument("payload")
@click.option("--idempotency-key", help="Start once: the same key answers the same run.")
@click.option("--wait", is_flag=True, help="Follow the run, a line per step, until it ends.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True)
@app_option
@json_option
@run
async def start(
    name: str,
    payload: str,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
    app_ref: str,
    as_json: bool,
) -> None:
    """Start workflow NAME with PAYLOAD (its JSON input; - reads stdin)."""
    app = load_app(app_ref)
    data = _json_input(sys.stdin.read() if payload == "-" else payload)
    async with connect(app) as bus:
        runs = Workflows(bus, app)
        started = await runs.start(name, data, idempotency_key=idempotency_key)
        if not wait:
            emit(as_json, started, f"started {started.run_id} ({started.stream} #{started.seq})")
            return
        if not as_json:
            console.print(f"started {started.run_id}", highlight=False)
        run_view = await _follow(runs, started.run_id, timeout, as_json)
    _finish(run_view, as_json)


@workflows.command("get")
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Follow the run, a line per step, until it ends.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True)
@app_option
@json_option
@run
async def get(run_id: str, wait: bool, timeout: float, app_ref: str, as_json: bool) -> None:
    """The run RUN_ID with its steps, from its events."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        runs = Workflows(bus, app)
        if wait:
            _finish(await _follow(runs, run_id, timeout, as_json), as_json)
            return
        found = await runs.history(run_id)
    if found is None:
        raise ValueError(f"no run {run_id!r}")
    emit(as_json, found.public(), _table(found))


@workflows.command("cancel")
@click.argument("run_id")
@app_option
@json_option
@run
async def cancel(run_id: str, app_ref: str, as_json: bool) -> None:
    """Ask the run RUN_ID to stop (a finished run stays as it is)."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        answer = await Workflows(bus, app).cancel(run_id)
    if answer is None:
        raise ValueError(f"no run {run_id!r}")
    said = "cancel requested" if answer.status == "running" else f"already {answer.status}"
    emit(as_json, answer, f"{run_id}: {said}")


def _json_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the input is not JSON: {exc}") from None


async def _follow(runs: Workflows, run_id: str, timeout: float, as_json: bool) -> RunView:
    """Print each step as it finishes (a JSON line each with --json); the finished run."""
    if await runs.history(run_id) is None:
        raise ValueError(f"no run {run_id!r}")
    shown: dict[str, str] = {}
    last = RunView()
    try:
        async with asyncio.timeout(timeout):
            async for view in runs.follow(run_id):
                last = view
                for name, step in view.steps.items():
                    if step.status in ("pending", "running") or shown.get(name) == step.status:
                        continue
                    shown[name] = step.status
                    line = {"step": name, "status": step.status, "attempts": step.attempts}
                    if as_json:
                        click.echo(json.dumps(line | {"error": step.error}))
                    else:
                        extra = f" ({step.error})" if step.error else ""
                        console.print(f"  {name}: {step.status}, {step.attempts} attempt(s){extra}",
                                      highlight=False)  # fmt: skip
    except TimeoutError:
        raise ValueError(f"run {run_id!r} did not finish in {timeout:g}s") from None
    return last


def _finish(run_view: RunView, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(run_view.public()).decode())
    else:
        console.print(_table(run_view))
    if run_view.status != "completed":
        sys.exit(1)


def _table(r: RunView) -> Table:
    table = Table("step", "status", "attempts", "started", "ended", "error",
                  title=f"{r.run_id} · {r.status}", caption=r.error or None)  # fmt: skip
    for name, s in r.steps.items():
        table.add_row(name, s.status, str(s.attempts), s.started_at or "-", s.ended_at or "-",
                      (s.error or "")[:120])  # fmt: skip
    return table
