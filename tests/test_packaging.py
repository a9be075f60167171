"""What a user installs: the wheel carries the license and the type marker, and
`python -m bus` is the `bus` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_license(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("bus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bus/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "bus/_nats/connection.py" in names
    console = "services/edge/console/static"
    for shipped in ("index.html", "app.js", "style.css", "pages/streams.js"):
        assert f"{console}/{shipped}" in names  # the console, as package data
    assert not any(n.startswith("tests/") for n in names)


def test_python_m_bus_is_the_bus_command() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "bus", "--help"], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert "Usage: python -m bus" in ran.stdout
    assert "publish" in ran.stdout
