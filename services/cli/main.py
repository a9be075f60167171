"""The `bus` command. Every verb takes `--json` for scripts; errors print one line, exit 1.

The verbs about what the bus holds live here; those that run something, in cli_run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click
import msgspec
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from bus import (
    Bus,
    BusError,
    EventStore,
    NoResponders,
    ProjectionStatus,
    ProjectionView,
    StoredMessage,
    load_app,
    parse_event_subject,
)
from services.runtime.rebuild_requests import REBUILD_SUBJECT, RebuildAnswer, RebuildRequest

from . import run as cli_run
from .console import (
    app_option,
    connect,
    console,
    emit,
    err_console,
    fail,
    json_option,
    run,
)
from .keys import keys
from .kv import kv
from .workflows import workflows


@click.group()
@click.version_option(package_name="bus")
def main() -> None:
    """bus: typed events on NATS JetStream. Settings come from BUS_* variables."""


for verb in cli_run.VERBS:
    main.add_command(verb)
main.add_command(workflows)
main.add_command(kv)
main.add_command(keys)


@main.command()
@click.argument("subject")
@click.argument("payload")
@click.option("--id", "event_id", help="Event id (default: a new UUIDv7); a repeat is stored once.")
@click.option(
    "--expected-version", type=int, help="Refuse unless the aggregate is at this version."
)
@app_option
@json_option
@run
async def publish(
    subject: str,
    payload: str,
    event_id: str | None,
    expected_version: int | None,
    app_ref: str,
    as_json: bool,
) -> None:
    """Publish PAYLOAD (JSON fields; - reads stdin) as the event SUBJECT names (tasks.7f3c.created)."""
    app = load_app(app_ref)
    if payload == "-":
        payload = sys.stdin.read()
    domain, aggregate_id, name = parse_event_subject(subject)
    cls = app.registry.by_subject(domain, name)
    if cls is None:
        known = ", ".join(sorted(f"{c.__domain__}.*.{c.__event_name__}" for c in app.registry))
        raise ValueError(f"no event type for {domain}.*.{name} in {app_ref} (known: {known})")
    try:
        event = msgspec.json.decode(payload, type=cls)
    except msgspec.DecodeError as exc:
        raise ValueError(f"payload is not a valid {cls.__event_type__}: {exc}") from None
    async with connect(app) as bus:
        result = await bus.publish(
            event, aggregate_id, event_id=event_id, expected_version=expected_version
        )
    text = f"{'duplicate of' if result.duplicate else 'stored as'} {result.stream} #{result.seq}"
    emit(as_json, result, f"{result.subject} {text} (event {result.event_id})")


@main.command()
@click.argument("pattern")
@click.option("--from-seq", type=click.IntRange(min=1), help="Start at this stream sequence.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages.")
@app_option
@json_option
@run
async def tail(
    pattern: str, from_seq: int | None, count: int | None, app_ref: str, as_json: bool
) -> None:
    """Follow events on PATTERN (e.g. 'tasks.>') live; Ctrl-C stops."""
    app = load_app(app_ref)
    seen = 0
    async with connect(app) as bus, contextlib.aclosing(bus.tail(pattern, from_seq)) as messages:
        async for message in messages:
            show_message(bus, message, as_json)
            seen += 1
            if count and seen >= count:
                break


def show_message(bus: Bus, m: StoredMessage, as_json: bool) -> None:
    event_type = m.headers.get("Bus-Event-Type", "?")
    principal = m.headers.get("Bus-Principal")
    try:
        fields: Any = msgspec.to_builtins(bus.open(m).event)
    except BusError:
        fields = m.data.decode(errors="replace")
    if as_json:
        record = {"stream": m.stream, "seq": m.seq, "subject": m.subject, "time": m.time}
        record |= {"type": event_type, "id": m.headers.get("Nats-Msg-Id"), "data": fields}
        record |= {"principal": principal} if principal else {}
        click.echo(json.dumps(record))
    else:
        console.print(
            f"[dim]{m.seq:>6}[/] [cyan]{m.subject}[/] [bold]{event_type}[/] {json.dumps(fields)}"
            + (f" [dim]by {escape(principal)}[/]" if principal else ""),
            highlight=False,
            soft_wrap=True,
        )


@main.command()
@json_option
@run
async def streams(as_json: bool) -> None:
    """List streams with their sizes and sequences."""
    async with connect() as bus:
        summaries = await bus.streams.list()
    table = Table("stream", "subjects", "messages", "bytes", "first", "last", "consumers")
    for s in summaries:
        table.add_row(
            s.name,
            " ".join(s.subjects),
            str(s.messages),
            str(s.bytes),
            str(s.first_seq),
            str(s.last_seq),
            str(s.consumers),
        )
    emit(as_json, summaries, table)


@main.group()
def dlq() -> None:
    """Dead letters: list and replay."""


@dlq.command("list")
@click.argument("stream")
@click.option("--from-seq", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True)
@json_option
@run
async def dlq_list(stream: str, from_seq: int, limit: int, as_json: bool) -> None:
    """List dead letters of STREAM (e.g. TASKS)."""
    async with connect() as bus:
        letters = await bus.dead_letters(stream, from_seq, limit)
    table = Table("seq", "original", "type", "consumer", "reason", title=f"DLQ_{stream}")
    for d in letters:
        table.add_row(
            str(d.seq),
            f"{d.original_subject} #{d.original_seq}",
            d.event_type,
            d.consumer,
            d.reason,
        )
    emit(as_json, [msgspec.structs.replace(d, headers={}) for d in letters], table)


@dlq.command("replay")
@click.argument("stream")
@click.option("--seq", type=click.IntRange(min=1), help="One dead letter (default: all of them).")
@json_option
@run
async def dlq_replay(stream: str, seq: int | None, as_json: bool) -> None:
    """Republish dead letters of STREAM to their original subjects."""
    async with connect() as bus:
        letters = await bus.dead_letters(stream, 1, 10_000) if seq is None else []
        seqs = [seq] if seq is not None else [d.seq for d in letters]
        results = [await bus.replay(stream, s) for s in seqs]
    lines = "\n".join(f"replayed to {r.subject} as {r.stream} #{r.seq}" for r in results)
    emit(as_json, results, lines or "nothing to replay")


@main.command()
@app_option
def schema(app_ref: str) -> None:
    """Print the JSON Schema of the app's events."""
    from bus import json_schema

    try:
        click.echo(json.dumps(json_schema(load_app(app_ref).registry), indent=2))
    except (BusError, ValueError) as exc:
        fail(str(exc))


@main.group()
def projections() -> None:
    """Projections: status, queries, rebuilds."""


@projections.command("list")
@app_option
@json_option
@run
async def projections_list(app_ref: str, as_json: bool) -> None:
    """Each projection's generation, position, lag and failures."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        statuses = [await ProjectionView(bus, p).status() for p in app.projections.values()]
    table = Table("projection", "generation", "position", "lag", "applied", "failures", "rebuild")
    for s in statuses:
        rebuild = f"gen {s.rebuilding} at {s.rebuild_position}" if s.rebuilding else "-"
        table.add_row(
            s.name,
            str(s.generation),
            str(s.position),
            str(s.lag),
            str(s.applied),
            str(s.failures),
            rebuild,
        )
    emit(as_json, statuses, table)


@projections.command("get")
@click.argument("name")
@click.argument("key")
@click.option(
    "--after-seq", type=click.IntRange(min=1), help="Wait until this sequence is applied."
)
@app_option
@json_option
@run
async def projections_get(
    name: str, key: str, after_seq: int | None, app_ref: str, as_json: bool
) -> None:
    """The state of KEY in projection NAME (read-your-writes with --after-seq)."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        view = ProjectionView(bus, app.projection(name))
        if after_seq is not None:
            await view.wait_for(after_seq, timeout=10)
        found = await view.get(key)
    if found is None:
        raise ValueError(f"projection {name!r} has no key {key!r}")
    state, seq = found
    body = {"key": key, "seq": seq, "state": msgspec.to_builtins(state)}
    if as_json:
        click.echo(msgspec.json.encode(body).decode())
    else:
        console.print_json(data=body)


@projections.command("rebuild")
@click.argument("name")
@app_option
@json_option
@run
async def projections_rebuild(name: str, app_ref: str, as_json: bool) -> None:
    """Refill NAME from the start in a new generation; queries switch when it has caught up."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        view = ProjectionView(bus, app.projection(name))
        before = await view.status()
        try:
            answer = await bus.request(
                f"{REBUILD_SUBJECT}.{name}", RebuildRequest(), RebuildAnswer, timeout=5
            )
        except NoResponders:
            raise ValueError(
                f"no projector runs {name!r}: start `bus up` or `bus projector`"
            ) from None
        if not answer.started:
            raise ValueError(answer.error or "the projector refused")
        status = await _follow_rebuild(view, before, quiet=as_json)
    emit(as_json, status, f"{name}: generation {status.generation} at {status.position}")


async def _follow_rebuild(
    view: ProjectionView[Any], before: ProjectionStatus, quiet: bool
) -> ProjectionStatus:
    """A progress bar until the projection has switched to a newer generation."""
    with Progress(disable=quiet, console=err_console) as progress:
        bar = progress.add_task(f"rebuilding {before.name}", total=max(1, before.position))
        while (status := await view.status()).generation <= before.generation:
            progress.update(bar, completed=status.rebuild_position, total=max(1, status.position))
            await asyncio.sleep(0.2)
        progress.update(bar, completed=status.position, total=max(1, status.position))
    return status


@main.group()
def aggregate() -> None:
    """Aggregates: their events and versions."""


@aggregate.command("show")
@click.argument("domain")
@click.argument("aggregate_id")
@app_option
@json_option
@run
async def aggregate_show(domain: str, aggregate_id: str, app_ref: str, as_json: bool) -> None:
    """The events of one aggregate (e.g. `tasks t1`) and its version."""
    app = load_app(app_ref)
    async with connect(app) as bus:
        history = await EventStore(bus).load(domain, aggregate_id)
    table = Table(
        "seq", "event", "fields", title=f"{domain}.{aggregate_id} · version {history.version}"
    )
    for e in history.events:
        table.add_row(str(e.seq), type(e.event).__name__, msgspec.json.encode(e.event).decode())
    data = {
        "version": history.version,
        "events": [
            {"seq": e.seq, "type": type(e.event).__name__, "id": e.id, "data": e.event}
            for e in history.events
        ],
    }
    emit(as_json, data, table)


@main.command("components")
@json_option
@run
async def components_verb(as_json: bool) -> None:
    """Components (heartbeating services, nats.micro responders, and instances whose
    heartbeat stopped) with the edge's last health verdict on each."""
    from services.edge.monitor import listing

    from .components import render

    async with connect() as bus:
        found = await listing(bus)
    emit(as_json, found, render(found))


@main.command()
@app_option
@json_option
@run
async def status(app_ref: str, as_json: bool) -> None:
    """One table: server, streams, consumers with pending, projections with lag, components."""
    from .status import collect, render

    app = load_app(app_ref)
    async with connect(app) as bus:
        found = await collect(bus, app)
    emit(as_json, found, render(found))
