"""What every `bus` verb shares: the options, one-line errors, JSON or a table, the
connection, and running a long-lived service until a signal."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from bus import App, BucketSpec, Bus, BusError, load_app
from services.runtime.lifecycle import run as run_loop
from services.runtime.settings import Settings

DEFAULT_APP = "services.demo:app"
APP_DIR = "bus.app_dir"  # click context meta: the directory the chosen app is imported from
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def run(coro_fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async verb; turn our errors (and Ctrl-C) into one line and an exit code."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            run_loop(coro_fn(*args, **kwargs))
        except (BusError, ValueError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def emit(as_json: bool, data: Any, table: Table | str | None = None) -> None:
    if as_json:
        click.echo(msgspec.json.encode(data).decode())
    elif table is not None:
        console.print(table)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def choose_app(app_ref: str | None, app_dir: str) -> tuple[str, Path]:
    """Which app a verb runs, and the directory its module is imported from: --app, else
    BUS_APP (or `app` in bus.toml), else the app of the `bus up` running on this data dir,
    else the demo. Explicit refs are found in `app_dir` (default: here), as uvicorn does."""
    here = Path(app_dir).resolve()
    if app_ref:
        return app_ref, here
    settings = Settings.from_env()
    if settings.app:
        return settings.app, here
    running = settings.running_up() or {}
    if running.get("app_ref"):
        return str(running["app_ref"]), Path(str(running.get("app_dir") or here))
    return DEFAULT_APP, here


def app_option(verb: Callable[..., Any]) -> Callable[..., Any]:
    """`--app module:attr` and `--app-dir DIR`; the verb gets the chosen ref as `app_ref`,
    with its directory first on the import path (and in `click`'s context meta)."""

    @functools.wraps(verb)
    def chosen(*args: Any, app_ref: str | None, app_dir: str, **kwargs: Any) -> Any:
        try:
            ref, where = choose_app(app_ref, app_dir)
        except (BusError, ValueError) as exc:
            fail(str(exc))
        if str(where) not in sys.path:
            sys.path.insert(0, str(where))
        click.get_current_context().meta[APP_DIR] = where
        return verb(*args, app_ref=ref, **kwargs)

    options = (
        click.option(
            "--app",
            "app_ref",
            help=f"module:attr of a bus.App [default: BUS_APP, else the running `bus up`'s, "
            f"else {DEFAULT_APP}]",
        ),
        click.option(
            "--app-dir",
            default=".",
            show_default=True,
            type=click.Path(file_okay=False),
            help="Where to import the app's module from.",
        ),
    )
    for option in reversed(options):
        chosen = option(chosen)
    return chosen


def connect(app: App | None = None, buckets: Iterable[BucketSpec] = ()) -> Bus:
    settings = Settings.from_env()
    return Bus(
        settings.resolve_nats_url(),
        credentials=settings.credentials,
        name="bus-cli",
        registry=app.registry if app else None,
        buckets=buckets,
        drain_timeout=2.0,
        protection=settings.protection,  # `bus tail` and the like read plaintext
    )


logs_option = click.option("--json", "as_json", is_flag=True, help="JSON logs on a terminal too.")


def serve(
    service: Callable[[Settings, App, bool], Coroutine[Any, Any, None]],
    app_ref: str,
    json: bool,
) -> None:
    """Run a long-lived service until Ctrl-C or SIGTERM; start-up errors as one line."""
    try:
        run_loop(service(Settings.from_env(), load_app(app_ref), json))
    except (BusError, ValueError, OSError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
