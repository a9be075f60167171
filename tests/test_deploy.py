"""Deployment files stay valid: nats-server itself checks the production config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bus._server import server_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_production_nats_config_is_valid_and_durable() -> None:
    conf = DEPLOY / "nats" / "nats-server.conf"
    checked = subprocess.run(
        [server_binary(), "-t", "-c", str(conf)],
        env={**os.environ, "SERVER_NAME": "nats-1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "sync_interval: always" in conf.read_text()
