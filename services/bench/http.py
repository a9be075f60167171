"""`bus bench --scenario http`: the edge beside a bare FastAPI endpoint, measured with wrk.

- `GET /api/v1/projections/task/{key}` at 32 connections against `bus up` (edge, projector,
  worker on an embedded server), beside a bare FastAPI app returning a dict from memory,
  each served by uvicorn in its own process, alternating, several runs; req/s and p99.
- `POST` an event then `GET ...?after_seq=` (read-your-writes) end to end, one pair after
  the other on one keep-alive connection: p50 and p99 of the pair. It crosses two stored
  writes (the event, the projection's key), so like the messaging scenario it runs on a
  server with `--sync-interval` (default nats-server's 2m); with `always` each waits for an
  fsync. Timed twice, alternating: with httpx, and with a bare HTTP/1.1 client on a socket
  (`_BareClient`). httpx costs a few hundred microseconds of Python per request on the
  client's side, so the second figure is closer to what the server takes; both are printed.
- The same pairs in three more forms, POSTing a `progressed` event of one task: followed by
  a plain GET of that task (no waiting: what read-your-writes is judged against, since
  absolute milliseconds move with the machine), by a GET with `after_seq` of that task, and
  by a GET with `after_seq` of `failures`, a projection that does not read `progressed`
  (services/bench/app.py).

wrk comes from Debian (`apt-get install wrk`); it is C, so the load generator is not the
bottleneck the way a Python one would be on a 2-core machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from bus import ConfigError, EmbeddedServer
from bus._server import free_ports

from .summary import Verdict, at_least, at_most

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONNECTIONS = 32
TARGETS = {
    "get ratio": 1.2,
    "get p99 ms": 6.0,
    "ryw p50 ms": 3.0,
    "ryw p99 ms": 10.0,
    "ryw / plain p50": 1.3,
    "filtered / unfiltered p50": 1.1,
}

bare = FastAPI()
_ITEMS = {"b1": {"key": "b1", "seq": 1, "state": {"status": "created", "title": "bench"}}}


@bare.get("/items/{key}")
async def bare_item(key: str) -> dict[str, Any]:
    """The comparison: FastAPI's usual path, a dict from memory, no I/O."""
    return _ITEMS[key]


class Wrk(msgspec.Struct):
    rps: float
    p99_ms: float


def _wrk(url: str, seconds: int, authorization: str = AUTH["Authorization"]) -> Wrk:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: {authorization}",
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


# (method, path, JSON body or b"") -> (status, body)
Request = Callable[[str, str, bytes], tuple[int, bytes]]


class _BareClient:
    """HTTP/1.1 keep-alive on one blocking socket: a request is one write, a response is
    read to its Content-Length. Just enough for the edge's JSON answers."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def __call__(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{_HEADER}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._sock.sendall(f"{head}\r\n".encode() + body)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        length = re.search(rb"(?im)^content-length: *(\d+)", self._buffer[:end])
        if length is None:
            raise ConfigError(f"no Content-Length in {self._buffer[:end]!r}")
        stop = end + 4 + int(length.group(1))
        while len(self._buffer) < stop:
            self._receive()
        status, answer = int(self._buffer[9:12]), self._buffer[end + 4 : stop]
        self._buffer = self._buffer[stop:]
        return status, answer

    def _receive(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConfigError("the edge closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


_HEADER = f"Authorization: {AUTH['Authorization']}"


def _httpx(client: httpx.Client) -> Request:
    def request(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body else None
        answer = client.request(method, path, content=body or None, headers=headers)
        return answer.status_code, answer.content

    return request


# How a pair's GET is made from the POSTed event's sequence (key: the POSTed task id).
Pair = Callable[[str, int], str]
PAIRS: dict[str, tuple[str, bytes, Pair]] = {
    # name: (the event POSTed, its body, the GET that follows)
    "ryw": ("created", b'{"title": "t"}', lambda key, seq: f"task/{key}?after_seq={seq}"),
    "plain": ("progressed", b'{"attempt": 1}', lambda key, seq: "task/b1"),
    "unfiltered": ("progressed", b'{"attempt": 1}', lambda key, seq: f"task/b1?after_seq={seq}"),
    "filtered": ("progressed", b'{"attempt": 1}', lambda key, seq: f"failures/all?after_seq={seq}"),
}


def _read_your_writes(request: Request, case: str, prefix: str, pairs: int) -> list[float]:
    """Milliseconds from a POST to the GET that follows it answering (with the POSTed event
    applied, where it waits for it)."""
    event, body, get = PAIRS[case]
    times = []
    for i in range(pairs + 50):
        key = f"{prefix}{i}" if event == "created" else "b1"
        start = time.perf_counter()
        status, posted = request("POST", f"/api/v1/events/tasks.{key}.{event}", body)
        if status != 201:
            raise ConfigError(f"read-your-writes POST answered {status}: {posted!r}")
        seq = msgspec.json.decode(posted)["seq"]
        status, got = request("GET", f"/api/v1/projections/{get(key, seq)}", b"")
        if status != 200 or (
            case in ("ryw", "unfiltered") and msgspec.json.decode(got)["seq"] < seq
        ):
            raise ConfigError(f"read-your-writes GET answered {status}: {got!r}")
        if i >= 50:  # the first ones warm connections and caches
            times.append((time.perf_counter() - start) * 1000)
    return times


def _both_clients(base: str, port: int, rounds: int, pairs: int) -> dict[str, list[float]]:
    """Every case timed with httpx and with the bare client, alternating rounds and cases;
    keys are "<case> <client>". The bare client connects afresh for each of its rounds: it
    would idle past the server's keep-alive while httpx has its turn."""
    times: dict[str, list[float]] = {f"{c} {n}": [] for c in PAIRS for n in ("httpx", "bare")}
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        cases = list(PAIRS)
        for run in range(rounds):
            for name in ("httpx", "bare") if run % 2 == 0 else ("bare", "httpx"):
                bare = _BareClient(port) if name == "bare" else None
                request: Request = bare or _httpx(client)
                for case in cases if run % 2 == 0 else reversed(cases):
                    times[f"{case} {name}"] += _read_your_writes(
                        request, case, f"{name}{run}x", pairs
                    )
                if bare is not None:
                    bare.close()
    return times


def run_http_bench(runs: int, seconds: int, sync_interval: str, as_json: bool) -> list[Verdict]:
    if shutil.which("wrk") is None:
        raise ConfigError("wrk is not installed (Debian: apt-get install wrk; `make bench` does)")
    console = Console(stderr=True)
    bin_dir = Path(sys.executable).parent
    ours: list[Wrk] = []
    theirs: list[Wrk] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=Path(tmp, "nats"), sync_interval=sync_interval) as server,
    ):
        edge_port, bare_port = free_ports(2)
        env = {
            **os.environ,
            "BUS_NATS_URL": server.url,
            "BUS_DATA_DIR": tmp,
            "BUS_EDGE_PORT": str(edge_port),
            "BUS_API_KEYS": f"{KEY}:read+write",
            "BUS_PUBLISH_RATE": "0",
        }
        edge, bare_url = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{bare_port}"
        up = [str(bin_dir / "bus"), "up", "--app", "services.bench.app:app"]
        uvicorn = [
            sys.executable,
            "-m",
            "uvicorn",
            f"{__name__}:bare",
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
            httpx.post(  # the key the filtered case reads
                f"{edge}/api/v1/events/tasks.b0.failed",
                json={"attempt": 1, "reason": "bench"},
                headers=AUTH,
            ).raise_for_status()
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
            ryw = _both_clients(edge, edge_port, 4, 250)
    return _report(
        ours, theirs, ryw, f"{runs} runs of {seconds}s · sync_interval={sync_interval}", as_json
    )


def _report(
    ours: list[Wrk],
    theirs: list[Wrk],
    ryw: dict[str, list[float]],
    title: str,
    as_json: bool,
) -> list[Verdict]:
    def median(rows: list[Wrk], field: str) -> float:
        values: list[float] = [getattr(r, field) for r in rows]
        return statistics.median(values)

    figures: dict[str, Any] = {
        "bus_get_rps": median(ours, "rps"),
        "bare_get_rps": median(theirs, "rps"),
        "get ratio": median(ours, "rps") / median(theirs, "rps"),
        "get p99 ms": median(ours, "p99_ms"),
        "bare p99 ms": median(theirs, "p99_ms"),
        "runs": {"bus": ours, "bare": theirs},
    }
    for key, times in ryw.items():
        case, client = key.split()
        suffix = "" if client == "httpx" else f" ({client} client)"
        figures[f"{case} p50 ms{suffix}"] = statistics.median(times)
        figures[f"{case} p99 ms{suffix}"] = statistics.quantiles(times, n=100)[98]
    figures["ryw / plain p50"] = figures["unfiltered p50 ms"] / figures["plain p50 ms"]
    figures["filtered / unfiltered p50"] = figures["filtered p50 ms"] / figures["unfiltered p50 ms"]
    verdicts = [
        at_least("http", "GET projection key vs bare FastAPI", figures["get ratio"], 1.2, "x"),
        at_most("http", "GET p99, 32 connections", figures["get p99 ms"], 6.0, "ms"),
        at_most("http", "POST -> GET after_seq p50 (httpx)", figures["ryw p50 ms"], 3.0, "ms"),
        at_most("http", "POST -> GET after_seq p99 (httpx)", figures["ryw p99 ms"], 10.0, "ms"),
        at_most(
            "http", "POST -> GET after_seq vs plain GET, p50", figures["ryw / plain p50"], 1.3, "x"
        ),
        at_most(
            "http",
            "after_seq, filtered vs unfiltered projection, p50",
            figures["filtered / unfiltered p50"],
            1.1,
            "x",
        ),
    ]
    if as_json:
        print(msgspec.json.encode(figures).decode())
        return verdicts
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
    for case in ("plain", "unfiltered", "filtered"):
        table.add_row(
            f"progressed, then {case} GET p50 ms (httpx / bare)",
            f"{figures[f'{case} p50 ms']:.2f} / {figures[f'{case} p50 ms (bare client)']:.2f}",
            "",
            "",
        )
    for name, better in (
        ("get ratio", "high"),
        ("get p99 ms", "low"),
        ("ryw p50 ms", "low"),
        ("ryw p99 ms", "low"),
        ("ryw p50 ms (bare client)", "low"),
        ("ryw p99 ms (bare client)", "low"),
        ("ryw / plain p50", "low"),
        ("filtered / unfiltered p50", "low"),
    ):
        value, target = figures[name], TARGETS[name.split(" (")[0]]
        met = value >= target if better == "high" else value <= target
        mark = "[green]ok[/]" if met else "[red]missed[/]"
        bare_col = f"{figures['bare p99 ms']:.2f}" if name == "get p99 ms" else ""
        label = f"{name} (httpx)" if name.startswith("ryw") and "(" not in name else name
        if "/" in name:
            label = f"{name} (httpx)"
        table.add_row(
            label, f"{value:.2f}", bare_col, f"{'>=' if better == 'high' else '<='} {target} {mark}"
        )
    Console().print(table)
    return verdicts
