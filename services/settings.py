"""Settings from `BUS_*` environment variables, read once at start-up (names in DESIGN.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bus import ConfigError


@dataclass(frozen=True)
class Settings:
    nats_url: str | None  # BUS_NATS_URL, comma-separated; None: the embedded server
    data_dir: Path  # BUS_DATA_DIR: embedded server store and local state
    edge_host: str  # BUS_EDGE_HOST
    edge_port: int  # BUS_EDGE_PORT (0: a free port)
    api_keys: str | None  # BUS_API_KEYS: key:read+write+admin,key2:read

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        port = env.get("BUS_EDGE_PORT", "8080")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"BUS_EDGE_PORT must be a port number, not {port!r}")
        return cls(
            nats_url=env.get("BUS_NATS_URL") or None,
            data_dir=Path(env.get("BUS_DATA_DIR") or ".bus"),
            edge_host=env.get("BUS_EDGE_HOST") or "127.0.0.1",
            edge_port=int(port),
            api_keys=env.get("BUS_API_KEYS") or None,
        )

    @property
    def state_file(self) -> Path:
        """Where `bus up` records the embedded server's URLs for the other verbs."""
        return self.data_dir / "server.json"

    def resolve_nats_url(self) -> str:
        """BUS_NATS_URL, else the server a running `bus up` recorded."""
        if self.nats_url:
            return self.nats_url
        try:
            state = json.loads(self.state_file.read_text())
            pid = int(state["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError):
            raise ConfigError(
                f"no NATS server: set BUS_NATS_URL, or start one with `bus up` "
                f"(none is running for data dir {self.data_dir})"
            ) from None
        return str(state["nats_url"])
