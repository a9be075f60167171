"""Settings from `BUS_*` environment variables, read once at start-up (names in DESIGN.md)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus import ConfigError, Credentials
from bus.app import App


def _port(env: dict[str, str], name: str, default: str) -> int:
    value = env.get(name, default)
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise ConfigError(f"{name} must be a port number, not {value!r}")
    return int(value)


def _list(value: str) -> tuple[str, ...]:
    return tuple(filter(None, (item.strip() for item in value.split(","))))


@dataclass(frozen=True)
class Settings:
    nats_url: str | None  # BUS_NATS_URL, comma-separated; None: the embedded server
    data_dir: Path  # BUS_DATA_DIR: embedded server store and local state
    edge_host: str  # BUS_EDGE_HOST
    edge_port: int  # BUS_EDGE_PORT (0: a free port)
    api_keys: str | None  # BUS_API_KEYS: key:read+write+admin,key2:read
    public_reads: bool = False  # BUS_PUBLIC_READS: reads without a key
    cors_origins: tuple[str, ...] = ()  # BUS_CORS_ORIGINS: browser origins allowed to call
    allowed_hosts: tuple[str, ...] = ()  # BUS_EDGE_ALLOWED_HOSTS: Host values /mcp accepts
    publish_rate: float = 1000.0  # BUS_PUBLISH_RATE: events per second per key, 0 = unlimited
    credentials: Credentials = field(default_factory=Credentials)  # BUS_NATS_USER, ... below
    replicas: int = 1  # BUS_REPLICAS: of the app's streams and our KV buckets (3 on a cluster)
    metrics_host: str = "127.0.0.1"  # BUS_METRICS_HOST: where the projector and worker serve
    metrics_port: int | None = None  # BUS_METRICS_PORT: /metrics for them (unset: none)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        port = _port(env, "BUS_EDGE_PORT", "8080")
        metrics_port = _port(env, "BUS_METRICS_PORT", "") if env.get("BUS_METRICS_PORT") else None
        rate = env.get("BUS_PUBLISH_RATE", "1000")
        try:
            publish_rate = float(rate)
        except ValueError:
            publish_rate = -1.0
        if not 0 <= publish_rate < float("inf"):
            raise ConfigError(f"BUS_PUBLISH_RATE must be a number >= 0, not {rate!r}")
        replicas = env.get("BUS_REPLICAS", "1")
        if replicas not in ("1", "3", "5"):
            raise ConfigError(f"BUS_REPLICAS must be 1, 3 or 5, not {replicas!r}")
        reads = env.get("BUS_PUBLIC_READS", "false").lower()
        if reads not in ("true", "false", "1", "0"):
            raise ConfigError(f"BUS_PUBLIC_READS must be true or false, not {reads!r}")
        return cls(
            nats_url=env.get("BUS_NATS_URL") or None,
            data_dir=Path(env.get("BUS_DATA_DIR") or ".bus"),
            edge_host=env.get("BUS_EDGE_HOST") or "127.0.0.1",
            edge_port=port,
            api_keys=env.get("BUS_API_KEYS") or None,
            public_reads=reads in ("true", "1"),
            cors_origins=_list(env.get("BUS_CORS_ORIGINS", "")),
            allowed_hosts=_list(env.get("BUS_EDGE_ALLOWED_HOSTS", "")),
            publish_rate=publish_rate,
            credentials=Credentials(
                user=env.get("BUS_NATS_USER") or None,
                password=env.get("BUS_NATS_PASSWORD") or None,
                token=env.get("BUS_NATS_TOKEN") or None,
                creds=env.get("BUS_NATS_CREDS") or None,
                nkey_seed=env.get("BUS_NATS_NKEY_SEED") or None,
                tls_ca=env.get("BUS_NATS_TLS_CA") or None,
                tls_cert=env.get("BUS_NATS_TLS_CERT") or None,
                tls_key=env.get("BUS_NATS_TLS_KEY") or None,
            ),
            replicas=int(replicas),
            metrics_host=env.get("BUS_METRICS_HOST") or "127.0.0.1",
            metrics_port=metrics_port,
        )

    def bus_options(self, app: App) -> dict[str, Any]:
        """The keyword arguments a service's `Bus` takes from these settings and the app."""
        return {
            "credentials": self.credentials,
            "registry": app.registry,
            "streams": [dataclasses.replace(s, replicas=self.replicas) for s in app.streams],
            "replicas": self.replicas,
        }

    def edge_options(self) -> dict[str, Any]:
        """The keyword arguments `create_app` takes from these settings."""
        return {
            "credentials": self.credentials,
            "api_keys": self.api_keys,
            "public_reads": self.public_reads,
            "cors_origins": list(self.cors_origins),
            "allowed_hosts": list(self.allowed_hosts) or None,
            "publish_rate": self.publish_rate,
        }

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
