"""Secrets never leave: a run of `bus up` against a password-protected nats-server, with API
keys, traffic, refusals and a dead letter; then everything it emitted is searched for them
(its logs, every HTTP answer, `bus status`, `bus components`, the state file, the spans)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import jwt
import pytest

from bus import EmbeddedServer
from bus._server import free_port
from tests.otlp import Receiver
from tests.processes import BUS, running, wait_ready

PASSWORD = "pw-Zq81-never-print-me"
API_KEY = "key-Hx72-never-print-me"
WRONG_KEY = "guess-Wp33-never-print-me"
JWT_SECRET = "jwt-Kp55-never-print-me-0123456789"
TOKEN = jwt.encode({"sub": "svc", "exp": 2**31, "scope": "bus:read bus:write"}, JWT_SECRET)
EXPIRED = jwt.encode({"sub": "svc", "exp": 1000, "scope": "bus:read"}, JWT_SECRET)
SECRETS = (PASSWORD, API_KEY, WRONG_KEY, JWT_SECRET, TOKEN, EXPIRED, TOKEN.rsplit(".")[-1])


@pytest.mark.slow
def test_no_secret_in_logs_answers_status_or_traces(receiver: Receiver, tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedServer(store_dir=tmp_path / "nats", user="svc", password=PASSWORD) as server:
        env = {
            **os.environ,
            "BUS_NATS_URL": server.url,
            "BUS_NATS_USER": "svc",
            "BUS_NATS_PASSWORD": PASSWORD,
            "BUS_DATA_DIR": str(tmp_path),
            "BUS_EDGE_PORT": str(port),
            "BUS_API_KEYS": f"{API_KEY}:read+write+admin",
            "BUS_JWT_SECRET": JWT_SECRET,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        emitted: list[str] = []
        log = tmp_path / "up.log"
        with running([BUS, "up"], log, env) as up:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, up, log)
            good = {"Authorization": f"Bearer {API_KEY}"}
            bad = {"Authorization": f"Bearer {WRONG_KEY}"}
            answers = [
                httpx.post(
                    f"{base}/api/v1/events/tasks.s1.created", json={"title": "x"}, headers=good
                ),
                httpx.post(
                    f"{base}/api/v1/events/tasks.s2.created",
                    json={"title": "x", "fail_times": 9},
                    headers=good,
                ),
                httpx.post(
                    f"{base}/api/v1/events/tasks.s3.created", json={"title": "x"}, headers=bad
                ),
                httpx.get(f"{base}/api/v1/projections/task/s1", headers=bad),
                httpx.post(f"{base}/mcp/v2/tools/list", headers=bad),
                httpx.post(f"{base}/mcp", json={}, headers=bad),
                httpx.post(
                    f"{base}/api/v1/events/tasks.s4.created",
                    json={"title": "x"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ),
                httpx.get(f"{base}/api/v1/streams", headers={"Authorization": f"Bearer {EXPIRED}"}),
                httpx.post(f"{base}/mcp", json={}, headers={"Authorization": f"Bearer {EXPIRED}"}),
                httpx.get(f"{base}/health"),
                httpx.get(f"{base}/metrics"),
                httpx.get(f"{base}/api/v1/components", headers=good),
            ]
            emitted += [f"{a.status_code} {a.headers} {a.text}" for a in answers]
            assert [a.status_code for a in answers[6:9]] == [201, 401, 401]  # the tokens' turn
            time.sleep(3)  # retries, the dead letter, span batches
            for verb in (["status", "--json"], ["components", "--json"], ["streams"]):
                ran = subprocess.run(
                    [BUS, *verb], env=env, capture_output=True, text=True, check=False
                )
                assert ran.returncode == 0, ran.stderr
                emitted += [ran.stdout, ran.stderr]
            wrong = {**env, "BUS_NATS_PASSWORD": WRONG_KEY}
            refused = subprocess.run(
                [BUS, "streams"], env=wrong, capture_output=True, text=True, check=False
            )
            assert refused.returncode != 0
            emitted.append(refused.stderr)
        assert up.returncode == 0
        emitted.append(log.read_text())
        emitted += [p.read_text() for p in tmp_path.glob("*.json")]
        with receiver.lock:
            emitted += [str(span) for _, span in receiver.spans]
            emitted += [str(record) for _, record in receiver.logs]  # logs over OTLP too
    assert len(receiver.spans) > 5  # the traces were there to search
    assert receiver.logs  # and the exported logs
    everything = "\n".join(emitted)
    assert "dead-lettered" in everything  # the run did what the search is about
    for secret in SECRETS:
        assert secret not in everything, (
            f"a secret leaked: …{everything[everything.find(secret) - 200 :][:300]}"
        )
