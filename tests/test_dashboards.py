"""Dashboards and alert rules are code that works: the committed Grafana JSON is what
observability/dashboards generates, the rules pass promtool, and every PromQL expression of
both returns data from a real Prometheus scraping a real `bus up` while traffic flows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bus import EmbeddedServer
from bus._server import free_ports
from observability.dashboards import OUTPUT, render
from tests.processes import BUS, running, wait_for

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/rules/bus.yml"
KEY = "dashboards-key"
# Grafana's variables, expanded as Grafana would (any other `$` fails the live test).
VARIABLES = {"$__rate_interval": "1m"}
THRESHOLD = re.compile(r"\s*(?:[<>]=?|[!=]=)\s*[-+]?\d+(?:\.\d+)?\s*$")
REGENERATE = "run `python -m observability.dashboards` and commit deploy/grafana/dashboards/"


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, target) for every query of every committed dashboard panel."""
    for path in sorted(OUTPUT.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name} / {panel['title']} / {target['refId']}", target


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def value_of(expr: str) -> str:
    """An alert's expression without its final threshold comparison: the value it compares."""
    value = THRESHOLD.sub("", expr.strip())
    assert value != expr.strip(), f"expected `<value> <op> <number>`: {expr}"
    return value


def test_committed_dashboards_are_what_the_code_generates() -> None:
    generated = render()
    committed = {path.name: path.read_text() for path in OUTPUT.glob("*.json")}
    stale = sorted(
        n for n in generated.keys() | committed.keys() if generated.get(n) != committed.get(n)
    )
    assert not stale, f"stale or missing dashboards {stale}: {REGENERATE}"
    assert len(generated) == 4


def test_latency_panels_carry_exemplars() -> None:
    """Exemplars link a latency spike to the trace behind it (the data source links Tempo)."""
    quantiles = [t for _, t in dashboard_targets() if "histogram_quantile" in t["expr"]]
    assert len(quantiles) >= 6
    assert all(t["exemplar"] for t in quantiles)


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len(rules) == 6
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        value_of(rule["expr"])


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian's `prometheus` package; .ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def drive_traffic(edge: httpx.Client) -> None:
    """A success, a handler that fails until it is dead-lettered, reads, a 404 and a 422."""
    ok, poison = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    created = edge.post(f"/api/v1/events/tasks.{ok}.created", json={"title": "x"})
    statuses = [
        created.status_code,
        edge.post(
            f"/api/v1/events/tasks.{poison}.created", json={"title": "y", "fail_times": 9}
        ).status_code,
        edge.get("/api/v1/projections").status_code,
        edge.get(
            f"/api/v1/projections/task/{ok}", params={"after_seq": created.json()["seq"]}
        ).status_code,
        edge.get("/api/v1/projections/task/no-such-task").status_code,
        edge.post(f"/api/v1/events/tasks.{ok}.created", json={"title": 5}).status_code,
    ]
    assert statuses == [201, 201, 200, 200, 404, 422]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_expression_returns_data_from_a_live_prometheus(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not on PATH (Debian's `prometheus` package; .ci/run installs it)")
    edge_port, prom_port = free_ports(2)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "edge",
                        "static_configs": [{"targets": [f"127.0.0.1:{edge_port}"]}],
                    }
                ],
            }
        )
    )
    up_log, prom_log = tmp_path / "up.log", tmp_path / "prometheus.log"
    with (
        EmbeddedServer(store_dir=tmp_path / "nats") as server,
        running(
            [BUS, "up"],
            up_log,
            {
                **os.environ,
                "BUS_NATS_URL": server.url,
                "BUS_DATA_DIR": str(tmp_path),
                "BUS_EDGE_PORT": str(edge_port),
                "BUS_API_KEYS": f"{KEY}:read+write+admin",
                "BUS_PUBLISH_RATE": "0",
            },
        ) as up,
        running(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=exemplar-storage",
            ],
            prom_log,
        ) as prom,
        httpx.Client(
            base_url=f"http://127.0.0.1:{edge_port}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ) as edge,
        httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10) as api,
    ):

        def query(expr: str) -> list[dict[str, Any]]:
            answer = api.get("/api/v1/query", params={"query": expr})
            assert answer.status_code == 200, f"{expr}: {answer.text}"
            return answer.json()["data"]["result"]  # type: ignore[no-any-return]

        def scrapes() -> int:
            found = query('count_over_time(up{job="edge"}[5m])')
            return int(found[0]["value"][1]) if found else 0

        wait_for(lambda: edge.get("/readyz").status_code == 200, "the edge", up, up_log)
        wait_for(lambda: api.get("/-/ready").status_code == 200, "prometheus", prom, prom_log)
        wait_for(lambda: query('up{job="edge"} == 1'), "a first scrape", prom, prom_log)
        drive_traffic(edge)
        dead_letter = re.compile(r'^bus_dead_letter_messages\{stream="TASKS"\} [1-9]', re.M)
        wait_for(
            lambda: dead_letter.search(edge.get("/metrics").text), "a dead letter", up, up_log, 60
        )
        after_traffic = scrapes()
        wait_for(lambda: scrapes() >= after_traffic + 5, "five more scrapes", prom, prom_log)

        expressions = [(where, target["expr"]) for where, target in dashboard_targets()]
        expressions += [
            (f"{RULES.name} / {r['alert']}", value_of(r["expr"])) for r in alert_rules()
        ]
        assert len(expressions) >= 25
        no_data = []
        for where, expr in expressions:
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{where}: unknown template variable in {expr}"
            if not query(expr):
                no_data.append(f"{where}: {expr}")
        assert no_data == [], "expressions without data:\n" + "\n".join(no_data)

        rules = api.get("/api/v1/rules").json()["data"]["groups"]
        unhealthy = [
            (r["name"], r.get("lastError"))
            for g in rules
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert len([r for g in rules for r in g["rules"]]) == 6
        assert unhealthy == []
