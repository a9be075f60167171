"""Settings: environment, a TOML file, and one clear line for a bad value (never a secret)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bus import ConfigError
from services.runtime.settings import Settings

BUS = str(Path(sys.executable).with_name("bus"))


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray bus.toml
    for name in [n for n in __import__("os").environ if n.startswith("BUS_")]:
        monkeypatch.delenv(name)


def test_defaults_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings.from_env()
    assert (defaults.edge_host, defaults.edge_port, defaults.replicas) == ("127.0.0.1", 8080, 1)
    assert defaults.nats_url is None
    monkeypatch.setenv("BUS_EDGE_PORT", "0")
    monkeypatch.setenv("BUS_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("BUS_NATS_URL", "")  # empty is unset
    monkeypatch.setenv("BUS_NATS_USER", "svc")
    monkeypatch.setenv("BUS_NATS_PASSWORD", "pw")
    settings = Settings.from_env()
    assert settings.edge_port == 0
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.nats_url is None
    assert settings.credentials.user == "svc"
    assert settings.credentials.password == "pw"
    assert "pw" not in repr(settings)  # secrets stay out of reprs and tracebacks


def test_a_toml_file_and_the_environment_over_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "bus.toml").write_text(
        'edge_port = 8181\nreplicas = 3\ncors_origins = ["https://c.example"]\n'
    )
    settings = Settings.from_env()
    assert (settings.edge_port, settings.replicas) == (8181, 3)
    assert settings.cors_origins == ("https://c.example",)
    monkeypatch.setenv("BUS_EDGE_PORT", "8282")
    assert Settings.from_env().edge_port == 8282
    other = tmp_path / "elsewhere.toml"
    other.write_text("publish_rate = 5\n")
    monkeypatch.setenv("BUS_CONFIG", str(other))
    assert Settings.from_env().publish_rate == 5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BUS_EDGE_PORT", "99999", "BUS_EDGE_PORT"),
        ("BUS_EDGE_PORT", "http", "BUS_EDGE_PORT"),
        ("BUS_REPLICAS", "2", "BUS_REPLICAS"),
        ("BUS_PUBLISH_RATE", "-1", "BUS_PUBLISH_RATE"),
        ("BUS_PUBLISH_RATE", "inf", "BUS_PUBLISH_RATE"),
        ("BUS_PUBLIC_READS", "maybe", "BUS_PUBLIC_READS"),
        ("BUS_METRICS_PORT", "-5", "BUS_METRICS_PORT"),
        ("BUS_CONFIG", "/nonexistent/bus.toml", "BUS_CONFIG"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env()
    assert "\n" not in str(refused.value)


def test_a_bad_secret_is_named_not_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "bus.toml").write_text('nats_password = ["secret-in-a-list"]\n')
    with pytest.raises(ConfigError, match="BUS_NATS_PASSWORD") as refused:
        Settings.from_env()
    assert "secret-in-a-list" not in str(refused.value)


def test_the_cli_stops_with_that_line(tmp_path: Path) -> None:
    ran = subprocess.run(
        [BUS, "streams"],
        env={"PATH": "/usr/bin:/bin", "BUS_EDGE_PORT": "x"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode != 0
    assert ran.stderr.strip().startswith("error: BUS_EDGE_PORT")
    assert "Traceback" not in ran.stderr
