"""Every process is a component: registered with a health URL that answers, looked up by
name over HTTP, warned about by the edge's /health when its heartbeat stops; the worker's
and projector's /readyz follow their NATS, and so do the image's and compose's checks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bus import Bus, Component, ConfigError, EmbeddedServer, Registration
from bus._kv import ensure_bucket
from bus._registry import BUCKET, RETAIN
from bus._server import free_port
from tests.edge import KEYS, READ
from tests.processes import BUS, running, wait_for, wait_ready

ROOT = Path(__file__).resolve().parents[1]


async def health_of(edge: httpx.AsyncClient) -> dict[str, Any]:
    response = await edge.get("/health")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def until(check: Any, timeout: float = 20.0) -> Any:
    """Poll the async `check()` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.1)


async def test_look_up_one_component_by_name(edge: httpx.AsyncClient, tasks: Bus) -> None:
    me = Component(name="billing", health_url="http://127.0.0.1:1/health", ports={"http": 1})
    async with Registration(tasks, me):
        found = await edge.get("/api/v1/components/billing", headers=READ)
        assert found.status_code == 200
        body = found.json()
        assert (body["name"], body["silent"]) == ("billing", [])
        [instance] = body["instances"]
        assert (instance["instance"], instance["health_url"]) == (me.instance, me.health_url)
        assert instance["ports"] == {"http": 1}
        assert (await edge.get("/api/v1/components/billing")).status_code == 401
    gone = await edge.get("/api/v1/components/billing", headers=READ)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert "billing" in gone.json()["detail"]


@pytest.mark.parametrize("name", ["*", ">", "a.b", "has space", "x" * 129, "%00", "é", "a%2Eb"])
async def test_hostile_component_names_are_refused(edge: httpx.AsyncClient, name: str) -> None:
    refused = await edge.get(f"/api/v1/components/{name}", headers=READ)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"


async def test_a_component_that_stops_heartbeating_is_a_health_warning(
    edge: httpx.AsyncClient, tasks: Bus
) -> None:
    crashed = await Registration(tasks, Component(name="crashy"), ttl=1.0).start()
    tidy = await Registration(tasks, Component(name="tidy"), ttl=1.0).start()
    assert (await health_of(edge))["status"] == "pass"
    assert crashed._task is not None
    crashed._task.cancel()  # the process died: no heartbeat, no deregistration
    await tidy.stop()

    async def warned() -> dict[str, Any] | None:
        body = await health_of(edge)
        return body if body["status"] == "warn" else None

    body = await until(warned)
    [check] = body["checks"]["component:crashy"]
    assert check["status"] == "warn"
    assert "no heartbeat" in check["output"]
    assert "component:tidy" not in body["checks"]

    async def silent() -> dict[str, Any] | None:
        found = (await edge.get("/api/v1/components/crashy", headers=READ)).json()
        return found if not found["instances"] else None

    found = await until(silent)
    assert [s["component"]["name"] for s in found["silent"]] == ["crashy"]
    assert found["silent"][0]["silent_for"] > 1.0
    assert (await edge.get("/api/v1/components/tidy", headers=READ)).status_code == 404


async def test_registration_refuses_names_it_could_not_be_found_by(bus: Bus) -> None:
    for name in ("", "a.b", "a b", "*", "x" * 129):
        with pytest.raises(ConfigError):
            Registration(bus, Component(name=name))


async def test_a_bucket_made_by_an_older_version_keeps_silent_entries(bus: Bus) -> None:
    await ensure_bucket(bus.js, BUCKET, ttl=10.0)  # what registries used to make
    async with Registration(bus, Component(name="upgraded")):
        info = await bus.js.stream_info(f"KV_{BUCKET}")
        assert info.config.max_age == RETAIN


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][
        name
    ]
    return service


def image_health_check() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, run with this interpreter."""
    text = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"HEALTHCHECK .*?CMD (\[.*\])", text)
    assert found, "the image has no HEALTHCHECK"
    command: list[str] = json.loads(found[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def health_check_passes(url: str) -> bool:
    env = {**os.environ, "BUS_HEALTHCHECK_URL": url}
    ran = subprocess.run(image_health_check(), env=env, capture_output=True, timeout=10)
    return ran.returncode == 0


def test_the_image_and_compose_check_readiness() -> None:
    assert "/readyz" in " ".join(image_health_check())
    assert compose_service("edge")["environment"]["BUS_HEALTHCHECK_URL"].endswith(":8080/readyz")
    for name in ("worker", "projector"):
        env = compose_service(name)["environment"]
        port = env["BUS_METRICS_PORT"]
        assert env["BUS_HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/readyz"


def status_of(url: str) -> int:
    return httpx.get(url, timeout=5).status_code


@pytest.mark.slow
def test_a_workers_readyz_and_health_check_follow_its_nats(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The worker as compose runs it (its environment, the port made free): ready, then
    503 while its server is frozen (SIGSTOP) or stopped, and ready again when it is back."""
    port = free_port()
    compose_env = compose_service("worker")["environment"]
    check_url = compose_env["BUS_HEALTHCHECK_URL"].replace(
        compose_env["BUS_METRICS_PORT"], str(port)
    )
    env = {**os.environ, "BUS_NATS_URL": nats_server.url, "BUS_METRICS_PORT": str(port)}
    env["BUS_DATA_DIR"] = str(tmp_path)
    log = tmp_path / "worker.log"
    with running([BUS, "worker", "--app", "services.demo:app"], log, env) as worker:
        wait_for(lambda: status_of(check_url) == 200, "the worker ready", worker, log)
        assert health_check_passes(check_url)
        listed = subprocess.run(
            [BUS, "components", "--json"], env=env, capture_output=True, check=True, timeout=30
        )
        [me] = [c for c in json.loads(listed.stdout) if c["name"] == "tasks-worker"]
        assert me["health_url"] == f"http://127.0.0.1:{port}/health"
        assert status_of(me["health_url"]) == 200
        assert status_of(check_url.replace("/readyz", "/livez")) == 200

        nats_server.pause()
        try:
            wait_for(lambda: status_of(check_url) == 503, "503 on a frozen server", worker, log)
            assert not health_check_passes(check_url)
            assert status_of(check_url.replace("/readyz", "/livez")) == 200  # alive, not ready
        finally:
            nats_server.resume()
        wait_for(lambda: status_of(check_url) == 200, "ready after SIGCONT", worker, log)

        nats_server.stop()
        wait_for(lambda: status_of(check_url) == 503, "503 with the server gone", worker, log)
        body = httpx.get(me["health_url"], timeout=5).json()
        assert body["checks"]["nats:connected"][0]["status"] == "fail"
        nats_server.start()
        wait_for(lambda: status_of(check_url) == 200, "ready after a restart", worker, log, 60)
        assert health_check_passes(check_url)


@pytest.mark.slow
def test_edge_worker_and_projector_run_apart_are_components(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    edge_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BUS_NATS_URL": nats_server.url,
        "BUS_EDGE_PORT": str(port),
        "BUS_API_KEYS": KEYS,
        "BUS_DATA_DIR": str(tmp_path),
    }
    env.pop("BUS_METRICS_PORT", None)  # each picks a free port and says which
    headers = READ
    names = {"tasks-edge", "tasks-worker", "tasks-projector"}
    logs = {verb: tmp_path / f"{verb}.log" for verb in ("worker", "projector", "edge")}
    with (
        running([BUS, "worker"], logs["worker"], env) as worker,
        running([BUS, "projector"], logs["projector"], env),
        running([BUS, "edge"], logs["edge"], env) as edge,
    ):
        wait_ready(edge_url, edge, logs["edge"])

        def registered() -> dict[str, Any]:
            listed = httpx.get(f"{edge_url}/api/v1/components", headers=headers).json()
            return {c["name"]: c for c in listed} if names <= {c["name"] for c in listed} else {}

        wait_for(registered, "every process registered", edge, logs["edge"])
        found = registered()
        for name in names:
            component = found[name]
            assert component["health_url"], component
            assert status_of(component["health_url"]) == 200, name
            assert component["ports"]["http"] == component["port"]
            one = httpx.get(f"{edge_url}/api/v1/components/{name}", headers=headers).json()
            assert [i["health_url"] for i in one["instances"]] == [component["health_url"]]
        assert found["tasks-edge"]["health_url"] == f"{edge_url}/health"
        for name in ("tasks-worker", "tasks-projector"):
            readyz = next(e for e in found[name]["endpoints"] if e.endswith("/readyz"))
            assert status_of(readyz) == 200

        worker.send_signal(signal.SIGKILL)  # gone without deregistering
        worker.wait()

        def warned() -> bool:
            body = httpx.get(f"{edge_url}/health").json()
            return body["status"] == "warn" and "component:tasks-worker" in body["checks"]

        wait_for(warned, "a warning about the silent worker", edge, logs["edge"])
