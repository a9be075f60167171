"""The `bus` verbs that run something: the services (up, edge, projector, worker) and the
harnesses (bench, soak, demo traffic). `services.cli` adds them to the `bus` group."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click

from bus import BusError, load_app
from services.runtime.lifecycle import run as run_loop
from services.runtime.settings import Settings

from .console import (
    APP_DIR,
    app_option,
    emit,
    err_console,
    fail,
    json_option,
    logs_option,
    run,
    serve,
)


@click.command()
@app_option
@click.option("--fresh", is_flag=True, help="Wipe the embedded server's data first.")
@json_option
def up(app_ref: str, fresh: bool, as_json: bool) -> None:
    """Start the whole backbone: embedded NATS (unless BUS_NATS_URL) and the app's services."""
    from services.runtime.up import run_up

    app_dir = click.get_current_context().meta[APP_DIR]
    try:
        app = load_app(app_ref)
        settings = Settings.from_env()
        run_loop(
            run_up(settings, app, fresh=fresh, as_json=as_json, app_ref=app_ref, app_dir=app_dir)
        )
    except (BusError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@click.command()
@click.option(
    "--scenario",
    type=click.Choice(
        ["all", "messaging", "state", "http", "tracing", "security", "patterns", "tokens", "pages"]
    ),
    default="all",
    show_default=True,
    help="messaging: publish and consume; state: OCC appends, loads, a projection rebuild; "
    "http: the edge beside bare FastAPI under wrk, and read-your-writes latency; "
    "tracing: publish and consume with tracing off, at 10% and at 100% sampling; "
    "tokens: the GET projection path with a JWT beside an API key; "
    "security: publish and consume with signing, encryption and both, vs off; "
    "patterns: workflows beside hand-written handlers, KV compare-and-set and requests "
    "beside raw nats-py; pages: the console's stream pages on 1,000,000 events beside 1,000; "
    "all: each of them, then a summary of every target.",
)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--messages",
    type=click.IntRange(min=100),
    default=20_000,
    show_default=True,
    help="Per case and run (messaging, tracing): long enough that starting a consumer (a few "
    "ms) is not what is measured.",
)
@click.option(
    "--events",
    type=click.IntRange(min=1000),
    default=1_000_000,
    show_default=True,
    help="Events replayed by the state scenario's rebuild.",
)
@click.option(
    "--sync-interval", default="2m", show_default=True, help="Of the compared server (see docs)."
)
@json_option
def bench(
    scenario: str, runs: int, messages: int, events: int, sync_interval: str, as_json: bool
) -> None:
    """Measure bus against raw nats-py on one embedded server, in one run."""
    from services.bench.http import run_http_bench
    from services.bench.messaging import run_bench
    from services.bench.pages import run_pages_bench
    from services.bench.patterns import run_patterns_bench
    from services.bench.security import run_security_bench
    from services.bench.state import run_state_bench
    from services.bench.summary import Verdict, show
    from services.bench.tokens import run_tokens_bench
    from services.bench.tracing import run_tracing_bench

    scenarios: dict[str, Callable[[], list[Verdict]]] = {
        "messaging": lambda: run_loop(run_bench(runs, messages, sync_interval, as_json)),
        "state": lambda: run_loop(run_state_bench(runs, events, as_json)),
        "http": lambda: run_http_bench(runs, 10, sync_interval, as_json),
        "tracing": lambda: run_tracing_bench(runs, messages, as_json),
        "tokens": lambda: run_tokens_bench(runs, 10, as_json),
        "security": lambda: run_loop(run_security_bench(runs, messages, as_json)),
        "patterns": lambda: run_loop(run_patterns_bench(runs, as_json)),
        "pages": lambda: run_loop(run_pages_bench(runs)),
    }
    try:
        if scenario != "all":
            scenarios[scenario]()
            return
        show(
            [verdict for run_scenario in scenarios.values() for verdict in run_scenario()], as_json
        )
    except (BusError, ValueError) as exc:
        fail(str(exc))


@click.command()
@app_option
@logs_option
def edge(app_ref: str, as_json: bool) -> None:
    """Run the HTTP edge alone on BUS_EDGE_HOST:BUS_EDGE_PORT (keys from BUS_API_KEYS)."""
    from services.edge.server import serve_edge

    def show_key(key: str) -> None:  # shown once on the terminal, never logged
        err_console.print(f"development API key: [bold]{key}[/]", highlight=False)

    serve(functools.partial(serve_edge, show_key=show_key), app_ref, as_json)


@click.command()
@app_option
@logs_option
def projector(app_ref: str, as_json: bool) -> None:
    """Run the app's projections; start several for failover (one is active per projection)."""
    from services.runtime.projector import serve_projector

    serve(serve_projector, app_ref, as_json)


@click.command()
@app_option
@logs_option
def worker(app_ref: str, as_json: bool) -> None:
    """Run the app's handlers; start several to share the work."""
    from services.runtime.worker import serve_worker

    serve(serve_worker, app_ref, as_json)


@click.group()
def demo() -> None:
    """The demo domain `bus up` runs: load to watch in Grafana."""


@demo.command("traffic")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Requests per second.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to run (Ctrl-C ends early).",
)
@click.option("--url", help="The edge (default: the running `bus up`'s, else BUS_EDGE_*).")
@click.option("--key", help="An API key that may write (default: from BUS_API_KEYS).")
@json_option
@run
async def demo_traffic(
    rate: float, duration: float, url: str | None, key: str | None, as_json: bool
) -> None:
    """Create demo tasks and read them back through the HTTP edge, with live progress."""
    from services.demo.traffic import drive, render

    summary = await drive(url, key, rate, duration, quiet=as_json)
    emit(as_json, summary, render(summary))
    if summary.errors:
        raise ValueError(
            f"{summary.errors} of {summary.sent} requests failed (last: {summary.last_error})"
        )


@click.command()
@click.option("--duration", default="10m", show_default=True, help="How long: 90s, 10m, 2h.")
@click.option(
    "--restart-every",
    default="60s",
    show_default=True,
    help="Restart the embedded server this often, kill -9 and SIGTERM in turn (0: never).",
)
@click.option(
    "--every", "report_every", default="10s", show_default=True, help="Print figures this often."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Demo tasks created per second through the edge.",
)
@json_option
def soak(duration: str, restart_every: str, report_every: str, rate: float, as_json: bool) -> None:
    """Demo traffic through worker, projector and edge with server restarts; RSS, open files,
    lag and dead letters over time, then a verdict: nothing lost, nothing growing (not for CI)."""
    from services.soak import parse_duration, render, run_soak

    try:
        verdict = run_loop(
            run_soak(
                parse_duration(duration),
                parse_duration(restart_every),
                parse_duration(report_every),
                rate,
                as_json,
            )
        )
    except (BusError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    emit(as_json, verdict, render(verdict))
    if not verdict.ok:
        fail("; ".join(verdict.problems))


VERBS = (up, edge, projector, worker, bench, soak, demo)
