"""`bus demo traffic` and `bus status` as subprocesses, against a real `bus up` on a real
nats-server; and their errors: wrong arguments, no key, nothing listening."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import EmbeddedServer
from bus._server import free_port
from tests.processes import BUS, running, wait_ready

KEY = "traffic-key"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's BUS_* settings, plus `extra`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BUS_")} | extra


def bus(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def up_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running `bus up` (the demo app); the environment the other verbs need to find it."""
    data = tmp_path_factory.mktemp("traffic")
    port = free_port()
    log = data / "up.log"
    with EmbeddedServer(store_dir=data / "nats") as server:
        env = clean_env(
            BUS_NATS_URL=server.url,
            BUS_DATA_DIR=str(data),
            BUS_EDGE_PORT=str(port),
            BUS_API_KEYS=f"{KEY}:read+write+admin",
        )
        with running([BUS, "up"], log, env) as up:
            wait_ready(f"http://127.0.0.1:{port}", up, log)
            yield env


def _caught_up(status: dict[str, Any]) -> bool:
    lags = {p["name"]: (p["lag"], p["position"]) for p in status["projections"]}
    return all(
        lags.get(name, (1, 0))[0] == 0 and lags[name][1] > 0 for name in ("task", "task_counts")
    )


@pytest.mark.slow
def test_traffic_through_the_edge_then_status_shows_it(up_env: dict[str, str]) -> None:
    proc = bus("demo", "traffic", "--duration", "3", "--rate", "20", "--json", env=up_env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0, summary["last_error"]
    assert summary["sent"] > 0
    assert summary["created"] > 0
    assert summary["reads"] > 0
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}

    deadline = time.monotonic() + 15
    while True:
        status_proc = bus("status", "--json", env=up_env)
        assert status_proc.returncode == 0, status_proc.stderr
        status = json.loads(status_proc.stdout)
        if _caught_up(status) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert _caught_up(status), status["projections"]
    assert status["server"]["jetstream"] is True
    assert status["server"]["url"] == up_env["BUS_NATS_URL"]
    streams = {s["name"]: s for s in status["streams"]}
    assert streams["TASKS"]["messages"] >= summary["created"]
    internal = {n for n in streams if n.startswith(("KV_", "OBJ_"))}
    assert internal == {"KV_settings"}  # the demo's shared state; the bus's own are left out
    assert ("TASKS", "tasks-worker") in {(c["stream"], c["name"]) for c in status["consumers"]}
    assert "tasks" in {c["name"] for c in status["components"]}

    table = bus("status", env=up_env)
    assert table.returncode == 0, table.stderr
    assert "tasks-worker" in table.stdout
    assert "task_counts" in table.stdout


@pytest.mark.parametrize("args", [("--rate", "0"), ("--duration", "-1")])
def test_traffic_refuses_wrong_arguments(args: tuple[str, str]) -> None:
    """click's usage error (as for every verb): exit 2 and one line naming the option."""
    proc = bus("demo", "traffic", *args, "--key", "k", env=clean_env())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert args[0] in errors[0]


def test_traffic_without_a_key_says_how_to_get_one(tmp_path: Path) -> None:
    proc = bus("demo", "traffic", env=clean_env(BUS_DATA_DIR=str(tmp_path)))
    assert "--key" in one_line_error(proc)


def test_traffic_with_no_edge_is_one_clear_line() -> None:
    proc = bus("demo", "traffic", "--url", "http://127.0.0.1:1", "--key", "k", env=clean_env())
    assert "cannot reach the edge at http://127.0.0.1:1" in one_line_error(proc)


def test_status_with_no_server_is_one_clear_line() -> None:
    proc = bus("status", env=clean_env(BUS_NATS_URL="nats://127.0.0.1:1"))
    assert "cannot connect" in one_line_error(proc)
