"""What every `bus` verb shares: the options, one-line errors, JSON or a table, the
connection, and running a long-lived service until a signal."""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from bus import Bus, BusError
from bus.app import App, load_app

from .lifecycle import run as run_loop
from .settings import Settings

DEFAULT_APP = "services.demo:app"
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def run(coro_fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
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
app_option = click.option(
    "--app", "app_ref", default=DEFAULT_APP, show_default=True, help="module:attr of a bus.App."
)


def connect(app: App | None = None) -> Bus:
    settings = Settings.from_env()
    return Bus(
        settings.resolve_nats_url(),
        credentials=settings.credentials,
        name="bus-cli",
        registry=app.registry if app else None,
        drain_timeout=2.0,
    )


logs_option = click.option("--json", "as_json", is_flag=True, help="JSON logs on a terminal too.")


def serve(
    service: Callable[[Settings, App, bool], Awaitable[None]], app_ref: str, json: bool
) -> None:
    """Run a long-lived service until Ctrl-C or SIGTERM; start-up errors as one line."""
    try:
        run_loop(service(Settings.from_env(), load_app(app_ref), json))
    except (BusError, ValueError, OSError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
