"""The README's tour, block by block, against a real `bus up`: the front door cannot rot."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bus.server import free_port

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
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen([BIN / "bus", "up"], env=env, stdout=log, stderr=log)
    try:
        _wait_ready(env["EDGE"], up)
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
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0


def _wait_ready(edge: str, up: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert up.poll() is None, "bus up stopped"
        try:
            if httpx.get(f"{edge}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("bus up did not become ready")
