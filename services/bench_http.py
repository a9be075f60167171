"""`bus bench --scenario http`: the edge beside a bare FastAPI endpoint, measured with wrk.

- `GET /api/v1/projections/task/{key}` at 32 connections against `bus up` (edge, projector,
  worker on an embedded server), beside a bare FastAPI app returning a dict from memory,
  each served by uvicorn in its own process, alternating, several runs; req/s and p99.
- `POST` an event then `GET ...?after_seq=` (read-your-writes) end to end, one client
  after the other: p50 and p99 of the pair. It crosses three stored writes (the event, the
  projection's key, its checkpoint), so like the messaging scenario it runs on a server with
  `--sync-interval` (default nats-server's 2m); with `always` each of them waits for an fsync.

wrk comes from Debian (`apt-get install wrk`); it is C, so the load generator is not the
bottleneck the way a Python one would be on a 2-core machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from bus import ConfigError, EmbeddedServer
from bus.server import free_port

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONNECTIONS = 32
TARGETS = {"get ratio": 1.2, "get p99 ms": 6.0, "ryw p50 ms": 3.0, "ryw p99 ms": 10.0}

bare = FastAPI()
_ITEMS = {"b1": {"key": "b1", "seq": 1, "state": {"status": "created", "title": "bench"}}}


@bare.get("/items/{key}")
async def bare_item(key: str) -> dict[str, Any]:
    """The comparison: FastAPI's usual path, a dict from memory, no I/O."""
    return _ITEMS[key]


class Wrk(msgspec.Struct):
    rps: float
    p99_ms: float


def _wrk(url: str, seconds: int) -> Wrk:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: {AUTH['Authorization']}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise ConfigError(f"wrk saw errors from {url}:\n{out}")
    return Wrk(rps, float(value) * scale)


@contextmanager
def _process(args: list[str], env: dict[str, str], ready: str, log: Path) -> Iterator[None]:
    with log.open("wb") as output:
        proc = subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _ok(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"{args[0]} did not start: {log.read_text()[-500:]}")
                time.sleep(0.1)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _read_your_writes(base: str, pairs: int) -> list[float]:
    """Milliseconds from POST to the projection answering with that event applied."""
    times = []
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        for i in range(pairs + 50):
            start = time.perf_counter()
            posted = client.post(f"/api/v1/events/tasks.ryw{i}.created", json={"title": "t"})
            seq = posted.json()["seq"]
            got = client.get(f"/api/v1/projections/task/ryw{i}", params={"after_seq": seq})
            if got.status_code != 200:
                raise ConfigError(f"read-your-writes GET answered {got.status_code}: {got.text}")
            if i >= 50:  # the first ones warm connections and caches
                times.append((time.perf_counter() - start) * 1000)
    return times


def run_http_bench(runs: int, seconds: int, sync_interval: str, as_json: bool) -> None:
    if shutil.which("wrk") is None:
        raise ConfigError("wrk is not installed (Debian: apt-get install wrk; `make bench` does)")
    console = Console(stderr=True)
    bin_dir = Path(sys.executable).parent
    ours, theirs = [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=f"{tmp}/nats", sync_interval=sync_interval) as server,
    ):
        edge_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "BUS_NATS_URL": server.url,
            "BUS_DATA_DIR": tmp,
            "BUS_EDGE_PORT": str(edge_port),
            "BUS_API_KEYS": f"{KEY}:read+write",
            "BUS_PUBLISH_RATE": "0",
        }
        edge, bare_url = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{bare_port}"
        up = [str(bin_dir / "bus"), "up"]
        uvicorn = [
            sys.executable,
            "-m",
            "uvicorn",
            "services.bench_http:bare",
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with (
            _process(up, env, f"{edge}/readyz", Path(tmp) / "up.log"),
            _process(uvicorn, env, f"{bare_url}/items/b1", Path(tmp) / "bare.log"),
        ):
            seeded = httpx.post(
                f"{edge}/api/v1/events/tasks.b1.created", json={"title": "bench"}, headers=AUTH
            )
            seq = seeded.json()["seq"]
            httpx.get(
                f"{edge}/api/v1/projections/task/b1", params={"after_seq": seq}, headers=AUTH
            ).raise_for_status()
            get_ours, get_bare = f"{edge}/api/v1/projections/task/b1", f"{bare_url}/items/b1"
            for run in range(runs):
                console.print(f"run {run + 1}/{runs}…")
                order = [(ours, get_ours), (theirs, get_bare)]
                for results, url in order if run % 2 == 0 else reversed(order):
                    results.append(_wrk(url, seconds))
            console.print("read-your-writes…")
            ryw = _read_your_writes(edge, 500)
    _report(
        ours, theirs, ryw, f"{runs} runs of {seconds}s · sync_interval={sync_interval}", as_json
    )


def _report(
    ours: list[Wrk], theirs: list[Wrk], ryw: list[float], title: str, as_json: bool
) -> None:
    def median(rows: list[Wrk], field: str) -> float:
        return statistics.median(getattr(r, field) for r in rows)

    cuts = statistics.quantiles(ryw, n=100)
    figures = {
        "bus_get_rps": median(ours, "rps"),
        "bare_get_rps": median(theirs, "rps"),
        "get ratio": median(ours, "rps") / median(theirs, "rps"),
        "get p99 ms": median(ours, "p99_ms"),
        "bare p99 ms": median(theirs, "p99_ms"),
        "ryw p50 ms": statistics.median(ryw),
        "ryw p99 ms": cuts[98],
        "runs": {"bus": ours, "bare": theirs},
    }
    if as_json:
        print(msgspec.json.encode(figures).decode())
        return
    table = Table(
        "figure",
        "bus edge",
        "bare FastAPI",
        "target",
        title=f"HTTP · median of {title} · {CONNECTIONS} connections",
    )
    table.add_row(
        "GET projection key req/s",
        f"{figures['bus_get_rps']:,.0f}",
        f"{figures['bare_get_rps']:,.0f}",
        "",
    )
    for name, better in (
        ("get ratio", "high"),
        ("get p99 ms", "low"),
        ("ryw p50 ms", "low"),
        ("ryw p99 ms", "low"),
    ):
        value, target = figures[name], TARGETS[name]
        met = value >= target if better == "high" else value <= target
        mark = "[green]ok[/]" if met else "[red]missed[/]"
        bare_col = f"{figures['bare p99 ms']:.2f}" if name == "get p99 ms" else ""
        table.add_row(
            name, f"{value:.2f}", bare_col, f"{'>=' if better == 'high' else '<='} {target} {mark}"
        )
    Console().print(table)
