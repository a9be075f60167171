"""The deployment files hang together without a Docker engine: docker-compose.yml is valid
Compose and mounts only files that exist, the NATS and Prometheus configs pass their own
tools' checks, and the Grafana data sources link metrics, traces and logs to each other."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from bus._server import server_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/datasources.yaml"
DASHBOARD_PROVIDER = ROOT / "deploy/grafana/provisioning/dashboards/bus.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE_FILE)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of the service's host-path mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def nats_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("nats:")
    }


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    Draft7Validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_everything_compose_mounts_or_builds_from_exists(compose: dict[str, Any]) -> None:
    missing = []
    named = set()
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            if not (ROOT / source).exists():
                missing.append(f"{name}: {source}")
        named |= {
            v.split(":")[0]
            for v in service.get("volumes", [])
            if isinstance(v, str) and not v.startswith((".", "/"))
        }
        if "build" in service:
            context = ROOT / service["build"]["context"]
            if not (context / service["build"]["dockerfile"]).is_file():
                missing.append(f"{name}: build {service['build']}")
    assert missing == []
    assert named <= set(compose.get("volumes") or {}), "named volumes must be declared"


def test_each_nats_node_config_is_valid_and_routes_to_every_node(compose: dict[str, Any]) -> None:
    """nats-server itself parses each node's config with that node's environment."""
    nodes = nats_services(compose)
    assert len(nodes) == 3, "a 3-node JetStream cluster"
    for name, node in nodes.items():
        tag = re.match(r"nats:(\d+)\.(\d+)", node["image"])
        assert tag, node["image"]
        assert (int(tag[1]), int(tag[2])) >= (2, 14), "server >= 2.14 keeps traceparent intact"
        conf_path = node["command"][node["command"].index("--config") + 1]
        [source] = [src for src, target in bind_mounts(node) if target == conf_path]
        conf = (ROOT / source).read_text()
        assert "sync_interval: always" in conf
        for other in nodes:
            assert f"nats-route://{other}:6222" in conf
        checked = subprocess.run(
            [server_binary(), "-t", "-c", str(ROOT / source)],
            env={**os.environ, **node.get("environment", {})},
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, f"{name}: {checked.stderr}{checked.stdout}"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian's `prometheus` package; .ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_data_sources_link_metrics_traces_and_logs() -> None:
    sources = {ds["uid"]: ds for ds in load(DATASOURCES)["datasources"]}
    assert set(sources) == {"prometheus", "tempo", "loki"}
    prometheus = sources["prometheus"]["jsonData"]
    assert [d["datasourceUid"] for d in prometheus["exemplarTraceIdDestinations"]] == ["tempo"]
    assert prometheus["exemplarTraceIdDestinations"][0]["name"] == "trace_id"
    tempo = sources["tempo"]["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    [derived] = sources["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "tempo"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    record = {"event": "handled", "trace_id": trace_id, "span_id": "00f067aa0ba902b7"}
    for line in (json.dumps(record), json.dumps(record, separators=(",", ":"))):
        found = re.search(derived["matcherRegex"], line)
        assert found, line
        assert found[1] == trace_id


def test_dashboard_provider_reads_where_compose_mounts_the_dashboards(
    compose: dict[str, Any],
) -> None:
    [provider] = load(DASHBOARD_PROVIDER)["providers"]
    mounts = dict(bind_mounts(compose["services"]["lgtm"]))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"].rstrip("/")
