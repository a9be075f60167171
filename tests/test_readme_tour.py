"""The README's tour, block by block, against a real `bus up`: the front door cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bus._server import free_port
from tests.processes import BUS, running, wait_ready

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
KEY = "tour-key"


def tour_blocks() -> list[str]:
    """The ```sh blocks right after a `<!-- tour -->` line, in order."""
    return re.findall(r"<!-- tour -->\n```sh\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_a_tour() -> None:
    blocks = tour_blocks()
    assert len(blocks) >= 4
    joined = "\n".join(blocks)
    for step in ("after_seq", "bus tail", "bus dlq list", "/mcp/", "rebuild"):
        assert step in joined


@pytest.mark.slow
def test_the_tour_runs_against_bus_up(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BUS_DATA_DIR": str(tmp_path),
        "BUS_EDGE_PORT": str(port),
        "BUS_API_KEYS": f"{KEY}:read+write+admin",
        "EDGE": f"http://127.0.0.1:{port}",
        "KEY": KEY,
    }
    env.pop("BUS_NATS_URL", None)
    log = tmp_path / "up.log"
    with running([BUS, "up"], log, env) as up:
        wait_ready(env["EDGE"], up, log)
        for block in tour_blocks():
            ran = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert ran.returncode == 0, (
                f"{block}\n--- stdout\n{ran.stdout}\n--- stderr\n{ran.stderr}"
            )
            assert "Traceback" not in ran.stderr
    assert up.returncode == 0  # SIGTERM stops it cleanly
