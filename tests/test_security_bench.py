"""`bus bench --scenario security` runs, end to end, on a small scale (figures not judged)."""

from __future__ import annotations

import json

import pytest

from services.bench.security import MODES, run_security_bench


async def test_the_security_scenario_reports_every_mode_and_its_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    verdicts = await run_security_bench(1, 200, as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["rates"]) == set(MODES)
    assert all(printed["rates"][mode]["consume"][0] > 0 for mode in MODES)
    assert {v.measure for v in verdicts} == {
        "publish with encryption vs off",
        "consume with encryption vs off",
        "bus's share of a signature",
        "bus's share of a verification",
    }
