"""`bus bench --scenario tokens`: the GET projection path with a JWT beside the same path with
an API key, measured with wrk on one edge, alternating runs. A token is verified once and
then cached until it expires, so the target is >= 0.9x of the API key's requests/s."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
from rich.console import Console

from bus import EmbeddedServer
from bus._server import free_port

from .http import AUTH, KEY, Wrk, _process, _wrk
from .summary import Verdict, at_least

SECRET = "bench-secret-of-at-least-32-characters"
TARGET = 0.9


def run_tokens_bench(runs: int, seconds: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    token = jwt.encode(
        {"sub": "bench", "exp": int(time.time()) + 3600, "scope": "bus:read bus:write"}, SECRET
    )
    keyed: list[Wrk] = []
    tokened: list[Wrk] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=Path(tmp, "nats")) as server,
    ):
        port = free_port()
        env = {
            **os.environ,
            "BUS_NATS_URL": server.url,
            "BUS_DATA_DIR": tmp,
            "BUS_EDGE_PORT": str(port),
            "BUS_API_KEYS": f"{KEY}:read+write",
            "BUS_JWT_SECRET": SECRET,
            "BUS_PUBLISH_RATE": "0",
        }
        edge = f"http://127.0.0.1:{port}"
        up = [str(Path(sys.executable).parent / "bus"), "up", "--app", "services.bench.app:app"]
        with _process(up, env, f"{edge}/readyz", Path(tmp) / "up.log"):
            seq = httpx.post(
                f"{edge}/api/v1/events/tasks.b1.created", json={"title": "bench"}, headers=AUTH
            ).json()["seq"]
            url = f"{edge}/api/v1/projections/task/b1"
            httpx.get(url, params={"after_seq": seq}, headers=AUTH).raise_for_status()
            cases = [(keyed, AUTH["Authorization"]), (tokened, f"Bearer {token}")]
            for run in range(runs):
                console.print(f"run {run + 1}/{runs}…")
                for results, authorization in cases if run % 2 == 0 else reversed(cases):
                    results.append(_wrk(url, seconds, authorization))
    key_rps, token_rps = [r.rps for r in keyed], [r.rps for r in tokened]
    figures: dict[str, Any] = {
        "api key rps": statistics.median(key_rps),
        "jwt rps": statistics.median(token_rps),
        "ratio": statistics.median(token_rps) / statistics.median(key_rps),
        "runs": {"api key": key_rps, "jwt": token_rps},
    }
    if as_json:
        print(msgspec.json.encode(figures).decode())
    else:
        Console().print(
            f"GET projection key, {runs} runs of {seconds}s: API key "
            f"{figures['api key rps']:,.0f} req/s ({min(key_rps):,.0f}-{max(key_rps):,.0f}), "
            f"JWT {figures['jwt rps']:,.0f} req/s ({min(token_rps):,.0f}-{max(token_rps):,.0f}), "
            f"ratio {figures['ratio']:.2f} (target >= {TARGET})"
        )
    return [at_least("tokens", "GET projection, JWT vs API key", figures["ratio"], TARGET, "x")]
