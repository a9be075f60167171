"""The README's two commands, from a fresh clone with no venv: `make up` and `make test`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NESTED = "BUS_QUICKSTART_NESTED"


def _clean_env(data_dir: Path) -> dict[str, str]:
    """The caller's environment minus anything pointing at this checkout's venv or a server."""
    # An outer `make test ARGS=...` exports ARGS and MAKEFLAGS; the clone's make must not see them.
    inherited = ("VIRTUAL_ENV", "NATS_URL", "BUS_NATS_URL", "ARGS", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    venv_bin = str(REPO / ".venv")
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(venv_bin)
    )
    env["BUS_DATA_DIR"] = str(data_dir)
    env["BUS_EDGE_PORT"] = "0"  # never a fixed port in tests
    env["BUS_API_KEYS"] = "quickstart-key:read+write+admin"  # what `bus demo traffic` uses
    env[NESTED] = "1"
    return env


def _wait_until_up(data_dir: Path, up: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, "make up exited early"
        try:
            state = json.loads((data_dir / "server.json").read_text())
            with urllib.request.urlopen(state["nats_monitor_url"] + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return state  # type: ignore[no-any-return]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError("make up did not become healthy in time")


def _assert_caught_up(bus: str, env: dict[str, str]) -> None:
    """`bus status --json` shows the demo projections with nothing left to apply."""
    deadline = time.monotonic() + 30
    while True:
        status = subprocess.run(
            [bus, "status", "--json"], env=env, capture_output=True, text=True, check=True
        )
        lags = {p["name"]: p["lag"] for p in json.loads(status.stdout)["projections"]}
        if set(lags) == {"task", "task_counts"} and not any(lags.values()):
            return
        assert time.monotonic() < deadline, f"projections not caught up: {lags}"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.skipif(
    bool(os.environ.get(NESTED)), reason="already running inside the quickstart clone"
)
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout to clone")
@pytest.mark.timeout(900)  # its own waits bound it: the clone's venv alone may take minutes
def test_fresh_clone_make_up_then_make_test(tmp_path: Path) -> None:
    clone, data = tmp_path / "clone", tmp_path / "data"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    readme = (clone / "README.md").read_text()
    assert "make up" in readme
    assert "make test" in readme
    env = _clean_env(data)

    with (
        (tmp_path / "up.log").open("wb") as log,
        subprocess.Popen(
            ["make", "up"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as up,
    ):
        try:
            state = _wait_until_up(data, up, timeout=600)  # includes creating the venv
            with urllib.request.urlopen(state["edge_url"] + "/readyz", timeout=5) as ready:
                assert ready.status == 200
            bus = str(clone / ".venv/bin/bus")
            published = subprocess.run(
                [bus, "publish", "tasks.q1.created", '{"title": "from a clone"}'],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert published.returncode == 0, published.stderr
            traffic = subprocess.run(
                [bus, "demo", "traffic", "--duration", "2", "--rate", "25", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert traffic.returncode == 0, traffic.stderr
            assert json.loads(traffic.stdout.splitlines()[-1])["errors"] == 0
            _assert_caught_up(bus, env)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have died on its own
                os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in the terminal running make up
            up.wait(timeout=30)
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, check=False)
    assert leftovers.stdout == b"", "a process outlived make up"

    tested = subprocess.run(
        ["make", "test", "ARGS=-q -p no:cacheprovider tests/test_cli.py -k schema_lists"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout[-2000:] + tested.stderr[-2000:]
    assert " passed" in tested.stdout
