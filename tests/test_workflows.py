"""Workflows on a real server: DAG order, parallel steps, retries, failures, cancel."""

from __future__ import annotations

import pytest

from bus import Workflows
from bus.testing import run_app
from tests.workflow_apps import Job, make_app


async def test_a_diamond_runs_in_order_and_b_c_overlap(nats_url: str) -> None:
    app, calls = make_app()
    async with run_app(app, nats_url) as harness:
        runs = Workflows(harness.bus, app)
        started = await runs.start("diamond", {"text": "x", "sleep": 0.3})
        run = await runs.wait(started.run_id, timeout=20)
        assert run.status == "completed", run
        steps = run.steps
        assert all(s.status == "completed" and s.attempts == 1 for s in steps.values())
        b, c = steps["b"].output, steps["c"].output
        assert b["started"] < c["ended"] and c["started"] < b["ended"]  # they overlapped
        assert steps["d"].output["text"] == "x+x+x+x+x"
        assert run.output == {"d": steps["d"].output}
        view = await runs.get(started.run_id, after_seq=run.seq)
        assert view is not None and view.status == "completed"
