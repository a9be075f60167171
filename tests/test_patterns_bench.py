"""The patterns benchmark's harness measures both sides (small numbers: no timing asserted)."""

from __future__ import annotations

import json

import pytest

from services.bench import patterns


async def test_the_workflow_case_measures_both_sides(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(patterns, "RUNS_PER_ROUND", 20)
    assert patterns.CASES[0] is patterns.workflow_case  # KV and requests have their own tests
    verdicts = await patterns.workflow_case(1, as_json=True)
    assert [v.measure for v in verdicts] == ["workflow runs/s vs hand-written"]
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    for side in ("workflow", "hand-written"):
        figures = printed["workflow"][side]
        assert figures["runs_per_s"] > 0
        assert 0 < figures["p50_s"] <= figures["p99_s"]
