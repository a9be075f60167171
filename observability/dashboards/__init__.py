"""Grafana dashboards as code: the JSON under deploy/grafana/dashboards/ is generated from here.

Run `python -m observability.dashboards` after changing a dashboard and commit its output;
tests/test_dashboards.py fails while the committed JSON differs from what this generates, and
evaluates every expression against a live Prometheus so a typo'd metric cannot ship.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from .boards import DASHBOARDS

OUTPUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def render() -> dict[str, str]:
    """`<slug>.json` -> its text: sorted keys and a trailing newline, so output is stable."""
    files = {}
    for build in DASHBOARDS:
        board = build().build()
        text = json.dumps(board, cls=JSONEncoder, sort_keys=True, indent=2)
        files[f"{board.uid}.json"] = text + "\n"
    return files


def write(directory: Path = OUTPUT) -> list[Path]:
    """Write every dashboard into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths
