"""The console's browser tests against a running `bus up` (a real process, its own embedded
nats-server): the app of tests/console_app.py, an admin key and a read-only one, and the
HTTP calls the tests make beside the browser."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.edge import READ, WRITE
from tests.processes import BUS, running, wait_for, wait_ready

REPO = Path(__file__).resolve().parents[1]
KEYS = "w-key:read+write+admin,r-key:read"  # WRITE's key may do anything, READ's only read


@dataclass(frozen=True)
class Backbone:
    """A running `bus up`: its edge, its nats-server and its log."""

    edge: str
    nats_url: str
    log: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.edge, timeout=10)

    def publish(self, subject: str, **fields: Any) -> dict[str, Any]:
        with self.http() as http:
            answer = http.post(f"/api/v1/events/{subject}", json=fields, headers=WRITE)
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def get(self, path: str, **params: Any) -> Any:
        with self.http() as http:
            answer = http.get(path, params=params, headers=READ)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def newest(self, stream: str, subject: str) -> list[dict[str, Any]]:
        """The stream's events on `subject` (a pattern), newest first (one page)."""
        page = self.get(f"/api/v1/streams/{stream}/events", newest="true", subject=subject)
        items: list[dict[str, Any]] = page["items"]
        return items

    def put(self, bucket: str, key: str, value: Any) -> None:
        with self.http() as http:
            answer = http.put(f"/api/v1/kv/{bucket}/{key}", json=value, headers=WRITE)
        assert answer.status_code in (200, 201), answer.text

    def until(self, found: Callable[[], Any], what: str, seconds: float = 60) -> Any:
        """Poll `found()` until it is truthy (a deadline, no fixed sleep); its value."""
        deadline = time.monotonic() + seconds
        while not (value := found()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)
        return value

    def dead_letters(self, subject: str) -> list[dict[str, Any]]:
        """TASKS's dead letters first stored on `subject`, once there are some."""
        return list(
            self.until(
                lambda: [
                    d
                    for d in self.get("/api/v1/streams/TASKS/dead-letters")["items"]
                    if d["original_subject"] == subject
                ],
                f"a dead letter of {subject}",
            )
        )


@contextlib.contextmanager
def bus_up(data_dir: Path) -> Iterator[Backbone]:
    """`bus up --app tests.console_app:app` on its own nats-server under `data_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in ("BUS_NATS_URL", "NATS_URL")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env |= {
        "BUS_DATA_DIR": str(data_dir),
        "BUS_EDGE_PORT": "0",
        "BUS_API_KEYS": KEYS,
        "BUS_HEALTH_INTERVAL": "0.5",
    }
    log = data_dir / "bus-up.log"
    args = [BUS, "up", "--app", "tests.console_app:app", "--app-dir", str(REPO), "--json"]
    with running(args, log, env, cwd=REPO) as process:
        recorded: dict[str, Any] = {}

        def up() -> bool:  # its server.json is written once it serves
            with contextlib.suppress(OSError, ValueError):
                recorded.update(json.loads((data_dir / "server.json").read_text()))
            return "edge_url" in recorded

        wait_for(up, "bus up's server.json", process, log, seconds=60)
        edge = recorded["edge_url"]
        wait_ready(edge, process, log)
        yield Backbone(edge, recorded["nats_url"], log)
