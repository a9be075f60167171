"""`bus workflows` against a running pipeline (`bus worker` and `bus projector` processes)."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import BUS, running, wait_for
from tests.test_cli import bus_cli, one_line_error
from tests.test_pipeline_workflow import RISKY

APP = ("--app", "services.pipeline:app")


@pytest.fixture
def pipeline(nats_url: str, tmp_path: Path) -> Iterator[None]:
    env = {**os.environ, "BUS_NATS_URL": nats_url, "BUS_METRICS_PORT": "0"}
    with (
        running([BUS, "worker", *APP], tmp_path / "worker.log", env) as worker,
        running([BUS, "projector", *APP], tmp_path / "projector.log", env),
    ):

        def consuming() -> bool:
            found = bus_cli("streams", "--json", url=nats_url, data_dir=tmp_path)
            consumers = {s["name"]: s["consumers"] for s in json.loads(found.stdout or "[]")}
            return consumers.get("WF", 0) >= 5  # the orchestrator and the four actions

        wait_for(consuming, "the worker's consumers", worker, tmp_path / "worker.log")
        yield


def test_start_wait_get_list_and_cancel(pipeline: None, nats_url: str, tmp_path: Path) -> None:
    def cli(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return bus_cli("workflows", *args, *APP, url=nats_url, data_dir=tmp_path, stdin=stdin)

    done = cli("start", "code_analysis", "-", "--wait", "--json",
               stdin=json.dumps({"code": RISKY}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    steps = [line["step"] for line in lines[:-1]]
    assert steps[0] == "parse"
    assert steps[-1] == "generate_report"
    assert sorted(steps[1:3]) == ["analyze_complexity", "security_scan"]
    run = lines[-1]
    assert run["status"] == "completed"

    shown = cli("get", run["run_id"], "--json")
    assert json.loads(shown.stdout)["output"] == run["output"]
    table = cli("get", run["run_id"])
    assert "parse" in table.stdout
    assert "completed" in table.stdout

    from services.pipeline import app
    from services.runtime.examples import try_commands

    first = try_commands(app)[0]  # what bus up's panel offers to try, as printed
    assert first == """bus workflows start code_analysis '{"code": "hello"}' --wait"""
    tried = cli(*shlex.split(first)[2:])
    assert tried.returncode == 0, tried.stderr

    failed = cli("start", "code_analysis", '{"code": "def (:"}', "--wait")
    assert failed.returncode == 1
    assert "parse: failed" in failed.stdout
    assert "generate_report: skipped" in failed.stdout

    shown = cli("list", "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)
    assert listed[0]["name"] == "code_analysis"
    deadline = time.monotonic() + 20  # the projector folds the runs
    while listed[0]["runs"] != {"completed": 2, "failed": 1}:
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)
        listed = json.loads(cli("list", "--json").stdout)
    status = bus_cli("status", "--json", *APP, url=nats_url, data_dir=tmp_path)
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["workflows"]["code_analysis"]
    assert counts["runs"] == listed[0]["runs"]
    assert counts["steps"]["parse"] == {"completed": 2, "failed": 1}
    assert counts["steps"]["generate_report"] == {"completed": 2, "skipped": 1}
    runs = json.loads(cli("runs", "code_analysis", "--status", "failed", "--json").stdout)
    assert len(runs["items"]) == 1

    started = json.loads(cli("start", "code_analysis", '{"code": "x = 1"}', "--json").stdout)
    cancelled = cli("cancel", started["run_id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["run_id"] == started["run_id"]

    for args, needle in [
        (("start", "code_analysis", "{not json"), "not JSON"),
        (("start", "code_analysis", '{"code": 5}'), "input of workflow"),
        (("start", "nope", "{}"), "no workflow 'nope'"),
        (("get", "code_analysis-missing"), "no run"),
        (("get", "bad.id"), "run id"),
        (("cancel", "code_analysis-missing"), "no run"),
        (("runs", "nope"), "no workflow"),
    ]:
        assert needle in one_line_error(cli(*args))


def test_bus_up_runs_the_pipeline(tmp_path: Path) -> None:
    """`bus up --app services.pipeline:app`: a run over its edge, then over the CLI the
    verbs find the app (the running `bus up`'s) without being told."""
    import signal
    import subprocess

    import httpx

    from tests.test_cli import ready_line

    env = {**os.environ, "BUS_DATA_DIR": str(tmp_path), "BUS_EDGE_PORT": "0"}
    env.pop("BUS_NATS_URL", None)
    output = tmp_path / "up.log"
    with (
        output.open("w") as log,
        subprocess.Popen([BUS, "up", *APP, "--json"], env=env, stdout=log, stderr=log) as up,
        httpx.Client(timeout=10) as edge,
    ):
        try:
            status = ready_line(output)
            assert status["streams"] == ["WF"]
            assert "workflow_runs" in status["projections"]  # type: ignore[operator]
            headers = {"Authorization": f"Bearer {status['dev_api_key']}"}
            edge.base_url, edge.headers = httpx.URL(str(status["edge_url"])), headers
            started = edge.post("/api/v1/workflows/code_analysis/runs", json={"code": RISKY})
            assert started.status_code == 201, started.text
            run_id, seq = started.json()["run_id"], started.json()["seq"]
            deadline = time.monotonic() + 30
            while (
                run := edge.get(
                    f"/api/v1/workflows/code_analysis/runs/{run_id}", params={"after_seq": seq}
                ).json()
            )["status"] == "running":
                assert time.monotonic() < deadline, run
                seq += 1  # fmt: skip
            assert run["status"] == "completed", run
            shown = bus_cli("workflows", "get", run_id, "--json", url=None, data_dir=tmp_path)
            assert json.loads(shown.stdout)["status"] == "completed", shown.stderr
        finally:
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=20) == 0
