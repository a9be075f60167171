"""The code-analysis pipeline as a workflow, in process: a report for good source, a parse
failure (no retries) that skips the rest for bad source."""

from __future__ import annotations

from bus import Workflows
from bus.testing import run_app
from services.pipeline import app

RISKY = """
import subprocess, pickle

API_KEY = "sk-0123456789abcdef"

def load(blob):
    return pickle.loads(blob)

def run(cmd, flag):
    if flag and cmd:
        for part in cmd:
            if part:
                subprocess.run(part, shell=True)
    return eval(cmd)
"""


async def test_the_pipeline_reports_on_good_source(nats_url: str) -> None:
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("code_analysis", {"code": RISKY, "language": "python"})
        run = await runs.wait(started.run_id, timeout=30)
        assert run.status == "completed", run
        assert [s.status for s in run.steps.values()] == ["completed"] * 4
        report = run.output
        assert report["summary"]["functions"] == 2
        rules = {f["rule"] for fs in report["findings_by_severity"].values() for f in fs}
        assert len(rules) >= 3, rules
        assert report["worst_functions"][0]["name"] == "run"


async def test_source_that_does_not_parse_fails_parse_and_skips_the_rest(nats_url: str) -> None:
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start(
            "code_analysis", {"code": "def broken(:\n", "language": "python"}
        )
        run = await runs.wait(started.run_id, timeout=30)
        assert run.status == "failed"
        parse = run.steps["parse"]
        assert parse.status == "failed"
        assert parse.attempts == 1
        assert "line 1" in (parse.error or ""), parse.error
        for name in ("analyze_complexity", "security_scan", "generate_report"):
            assert run.steps[name].status == "skipped"
