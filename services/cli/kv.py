"""`bus kv get|put|del|ls|watch`: the app's shared-state buckets from a terminal, with the
same compare-and-set as the library (`--revision`, `--create`)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import click
import msgspec
from rich.markup import escape
from rich.table import Table

from bus import Bucket, KeyEntry, KeyNotFound, load_app

from .console import app_option, connect, console, emit, json_option, run


@contextlib.asynccontextmanager
async def opened(app_ref: str, name: str) -> AsyncIterator[Bucket[Any]]:
    """The bucket `name` of the app, on a connected Bus (only buckets the app declares)."""
    app = load_app(app_ref)
    spec = app.buckets.get(name)
    if spec is None:
        declared = ", ".join(sorted(app.buckets)) or "none"
        raise ValueError(f"app {app.name!r} declares no bucket {name!r} (declared: {declared})")
    async with connect(app, [spec]) as bus:
        yield bus.bucket(name)


def _record(bucket: str, entry: KeyEntry[Any]) -> dict[str, Any]:
    fields = msgspec.to_builtins(entry)
    return {"bucket": bucket, **fields}


def _text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


@click.group("kv")
def kv() -> None:
    """Shared state: the app's buckets (JetStream KV), each write a new revision."""


@kv.command("get")
@click.argument("bucket")
@click.argument("key")
@app_option
@json_option
@run
async def kv_get(bucket: str, key: str, app_ref: str, as_json: bool) -> None:
    """The value of KEY in BUCKET and its revision."""
    async with opened(app_ref, bucket) as handle:
        found = await handle.get(key)
    if found is None:
        raise KeyNotFound(bucket, key)
    if as_json:
        click.echo(_text(_record(bucket, found)))
    else:
        console.print(f"[dim]{bucket}/{key} · revision {found.revision}[/]", highlight=False)
        console.print_json(_text(found.value))


@kv.command("put")
@click.argument("bucket")
@click.argument("key")
@click.argument("value")
@click.option("--revision", type=click.IntRange(min=1), help="Only if KEY is at this revision.")
@click.option("--create", is_flag=True, help="Only if KEY is absent.")
@app_option
@json_option
@run
async def kv_put(
    bucket: str,
    key: str,
    value: str,
    revision: int | None,
    create: bool,
    app_ref: str,
    as_json: bool,
) -> None:
    """Write VALUE (JSON; - reads stdin) to KEY in BUCKET."""
    if revision is not None and create:
        raise ValueError("--revision and --create exclude each other")
    text = sys.stdin.read() if value == "-" else value
    try:
        decoded = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"VALUE is not JSON: {exc}") from None
    async with opened(app_ref, bucket) as handle:
        checked = handle.convert(decoded)
        if create:
            written = await handle.create(key, checked)
        elif revision is not None:
            written = await handle.update(key, checked, revision=revision)
        else:
            written = await handle.put(key, checked)
    out = {"bucket": bucket, "key": key, "revision": written}
    emit(as_json, out, f"{bucket}/{key} is at revision {written}")


@kv.command("del")
@click.argument("bucket")
@click.argument("key")
@click.option("--revision", type=click.IntRange(min=1), help="Only if KEY is at this revision.")
@app_option
@json_option
@run
async def kv_del(bucket: str, key: str, revision: int | None, app_ref: str, as_json: bool) -> None:
    """Delete KEY from BUCKET (its history keeps the deletion)."""
    async with opened(app_ref, bucket) as handle:
        deleted = await handle.delete(key, revision=revision)
    out = {"bucket": bucket, "key": key, "revision": deleted}
    emit(as_json, out, f"{bucket}/{key} deleted at revision {deleted}")


@kv.command("ls")
@click.argument("bucket")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@app_option
@json_option
@run
async def kv_ls(bucket: str, prefix: str, limit: int, app_ref: str, as_json: bool) -> None:
    """Live keys of BUCKET in key order, with revisions and values."""
    entries: list[KeyEntry[Any]] = []
    cursor = None
    async with opened(app_ref, bucket) as handle:
        while len(entries) < limit:
            page = await handle.keys(prefix, min(limit - len(entries), 1000), cursor)
            entries += page.items
            if (cursor := page.next_cursor) is None:
                break
    table = Table("key", "revision", "value", "written", title=bucket)
    for e in entries:
        table.add_row(e.key, str(e.revision), _text(e.value)[:80], e.time[:19])
    emit(as_json, [_record(bucket, e) for e in entries], table)


@kv.command("watch")
@click.argument("bucket")
@click.argument("key", default=">")
@click.option("--after-revision", type=click.IntRange(min=0), help="Start after this revision.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many changes.")
@app_option
@json_option
@run
async def kv_watch(
    bucket: str,
    key: str,
    after_revision: int | None,
    count: int | None,
    app_ref: str,
    as_json: bool,
) -> None:
    """Follow changes of KEY (a key or pattern, `*` and `>`; default all) in BUCKET; Ctrl-C
    stops."""
    seen = 0
    async with opened(app_ref, bucket) as handle:
        changes = handle.watch(key, after_revision=after_revision)
        async with contextlib.aclosing(changes):
            async for entry in changes:
                if as_json:
                    click.echo(json.dumps(_record(bucket, entry)))
                else:
                    shown = _text(entry.value) if entry.operation == "put" else ""
                    line = f"[dim]{entry.revision:>6}[/] {entry.operation:<6} [cyan]{entry.key}[/]"
                    console.print(f"{line} {escape(shown)}", highlight=False, soft_wrap=True)
                seen += 1
                if count and seen >= count:
                    break
