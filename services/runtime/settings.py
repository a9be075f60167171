"""Settings: the `BUS_*` environment variables (names in DESIGN.md), or a TOML file.

The file is `$BUS_CONFIG`, else `./bus.toml` when there is one; its keys are the variable
names without `BUS_`, in lower case (`edge_port = 8081`). The environment wins over the file.
Read once at start-up; a bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bus import App, CircuitPolicy, ConfigError, Credentials, Protection

if TYPE_CHECKING:  # the edge (FastAPI, MCP) is seconds of imports every CLI verb would pay
    from services.edge.tokens import Tokens

Port = Annotated[int, Field(ge=0, le=65535)]
Names = Annotated[tuple[str, ...], NoDecode]  # comma-separated in the environment


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUS_", env_ignore_empty=True, frozen=True)

    nats_url: str | None = None  # comma-separated; unset: `bus up` starts the embedded server
    app: str | None = None  # module:attr of the App every verb runs, unless --app names one
    data_dir: Path = Path(".bus")  # the embedded server's store and local state
    edge_host: str = "127.0.0.1"
    edge_port: Port = 8080  # 0: a free port
    api_keys: SecretStr | None = None  # key:read+write+admin,key2:read
    public_reads: bool = False  # reads without a key
    grafana_url: str | None = None  # the console links trace ids to Grafana's Explore there
    cors_origins: Names = ()  # browser origins allowed to call the edge
    edge_allowed_hosts: Names = ()  # Host values /mcp accepts (DNS-rebinding guard)
    publish_rate: float = Field(default=1000.0, ge=0, allow_inf_nan=False)  # per key per s; 0: none
    # seconds an Idempotency-Key is honoured (a retry must find it: at least a minute)
    idempotency_ttl: float = Field(default=86400.0, ge=60, allow_inf_nan=False)
    replicas: int = 1  # of the app's streams and our KV buckets: 1, 3 (a cluster) or 5
    # seconds between the edge's checks of the registered components (0: none), and the
    # seconds one check may take
    health_interval: float = Field(default=5.0, ge=0, le=3600, allow_inf_nan=False)
    health_timeout: float = Field(default=2.0, gt=0, le=60, allow_inf_nan=False)
    metrics_host: str = "127.0.0.1"  # where `bus projector` and `bus worker` serve /metrics
    metrics_port: Port | None = None  # unset: they serve none
    nats_user: str | None = None  # how to authenticate to NATS: one of user (+ password),
    nats_password: SecretStr | None = None  # token, a .creds file or an nkey seed file
    nats_token: SecretStr | None = None
    nats_creds: Path | None = None
    nats_nkey_seed: Path | None = None
    nats_tls_ca: Path | None = None  # TLS to NATS
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # A request's circuit opens after this many failures (0: never) within the window (s),
    # stays open the cool-down (s), then lets that many probes by (bus.CircuitPolicy).
    circuit_failures: int = Field(default=5, ge=0)
    circuit_window: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    circuit_cool_down: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    circuit_probes: int = Field(default=1, ge=1)
    # JWT bearer tokens beside API keys (services/edge/tokens.py): one of secret (HS256),
    # public key (a PEM file) or JWKS URL; issuer and audience checked when set
    jwt_secret: SecretStr | None = None
    jwt_public_key: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Signed and encrypted events (bus._protection): this process's nkeys seed file, the
    # public keys it trusts, the domains (`*`: all) whose events must be signed by one of
    # them, and payload keys per domain (`tasks=id:base64,...;...`, or a file holding that).
    signing_seed: Path | None = None
    trusted_signers: Names = ()
    require_signatures: Names = ()
    encryption_keys: SecretStr | None = None

    @field_validator(
        "cors_origins", "edge_allowed_hosts", "trusted_signers", "require_signatures", mode="before"
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(filter(None, (item.strip() for item in value.split(","))))
        return value

    @field_validator("replicas")
    @classmethod
    def _odd_quorum(cls, value: int) -> int:
        if value not in (1, 3, 5):
            raise ValueError("must be 1, 3 or 5")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        chosen = os.environ.get("BUS_CONFIG")
        path = Path(chosen or "bus.toml")
        if chosen and not path.is_file():
            raise ValueError(f"no config file at {path}")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def from_env(cls) -> Settings:
        """The settings, or a ConfigError whose one line names the variable at fault."""
        try:
            return cls()
        except ValidationError as exc:
            error = exc.errors()[0]
            name = f"BUS_{str(error['loc'][0]).upper()}"
            secret = any(word in name for word in ("PASSWORD", "TOKEN", "KEYS"))
            shown = "" if secret else f" (got {error.get('input')!r})"
            raise ConfigError(f"{name}: {error['msg']}{shown}") from None
        except (OSError, ValueError) as exc:  # an unreadable or malformed config file
            raise ConfigError(f"BUS_CONFIG: {exc}") from None

    @property
    def credentials(self) -> Credentials:
        def path(p: Path | None) -> str | None:
            return str(p) if p else None

        def secret(s: SecretStr | None) -> str | None:
            return s.get_secret_value() if s else None

        return Credentials(
            user=self.nats_user,
            password=secret(self.nats_password),
            token=secret(self.nats_token),
            creds=path(self.nats_creds),
            nkey_seed=path(self.nats_nkey_seed),
            tls_ca=path(self.nats_tls_ca),
            tls_cert=path(self.nats_tls_cert),
            tls_key=path(self.nats_tls_key),
        )

    def bus_options(self, app: App) -> dict[str, Any]:
        """The keyword arguments a service's `Bus` takes from these settings and the app."""
        return {
            "credentials": self.credentials,
            "registry": app.registry,
            "streams": [dataclasses.replace(s, replicas=self.replicas) for s in app.streams],
            "replicas": self.replicas,
            "circuits": self.circuit_policy,
            "buckets": list(app.buckets.values()),
            "protection": self.protection,
        }

    @property
    def protection(self) -> Protection | None:
        keys = self.encryption_keys.get_secret_value() if self.encryption_keys else None
        return Protection.from_settings(
            self.signing_seed, self.trusted_signers, self.require_signatures, keys
        )

    @property
    def circuit_policy(self) -> CircuitPolicy:
        return CircuitPolicy(
            self.circuit_failures, self.circuit_window, self.circuit_cool_down, self.circuit_probes
        )

    def edge_options(self) -> dict[str, Any]:
        """The keyword arguments `create_app` takes from these settings."""
        return {
            "credentials": self.credentials,
            "api_keys": self.api_keys.get_secret_value() if self.api_keys else None,
            "public_reads": self.public_reads,
            "grafana_url": self.grafana_url,
            "cors_origins": list(self.cors_origins),
            "allowed_hosts": list(self.edge_allowed_hosts) or None,
            "publish_rate": self.publish_rate,
            "idempotency_ttl": self.idempotency_ttl,
            "replicas": self.replicas,
            "circuits": self.circuit_policy,
            "health_interval": self.health_interval,
            "health_timeout": self.health_timeout,
            "tokens": self.tokens,
            "protection": self.protection,
        }

    @property
    def tokens(self) -> Tokens | None:
        """The edge's JWT verifier, when a `BUS_JWT_*` key source is set."""
        if not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url):
            return None
        from services.edge.tokens import Tokens

        return Tokens(
            secret=self.jwt_secret.get_secret_value() if self.jwt_secret else None,
            public_key=self.jwt_public_key,
            jwks_url=self.jwt_jwks_url,
            issuer=self.jwt_issuer,
            audience=self.jwt_audience,
        )

    @property
    def state_file(self) -> Path:
        """Where `bus up` records the embedded server's URLs for the other verbs."""
        return self.data_dir / "server.json"

    def running_up(self) -> dict[str, Any] | None:
        """What the `bus up` running on this data dir recorded (None when none runs)."""
        try:
            state = json.loads(self.state_file.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return state if isinstance(state, dict) else None

    def resolve_nats_url(self) -> str:
        """BUS_NATS_URL, else the server a running `bus up` recorded."""
        if self.nats_url:
            return self.nats_url
        state = self.running_up()
        if state is None or "nats_url" not in state:
            raise ConfigError(
                f"no NATS server: set BUS_NATS_URL, or start one with `bus up` "
                f"(none is running for data dir {self.data_dir})"
            )
        return str(state["nats_url"])
