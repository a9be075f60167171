"""A user's own app, the way the README's "Your own app" tells it: the module found in the
current directory, every verb knowing the app without `--app`, `bus up`'s panel made from
the app, and the README's own pytest test of it run with the installed plugin."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bus._server import free_port
from tests.processes import BUS, running, wait_for, wait_ready

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
KEY = "shop-key"


def readme_block(marker: str, language: str = "sh") -> str:
    """The fenced block right after `<!-- marker -->` in the README."""
    found = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", README.read_text(), re.S)
    assert found, f"the README has no `<!-- {marker} -->` {language} block"
    return found[1]


def write_shop(where: Path) -> None:
    """shop/app.py exactly as the README shows it."""
    code = re.search(r"```python\n# shop/app\.py\n(.*?)```", README.read_text(), re.S)
    assert code, "the README shows no shop/app.py"
    (where / "shop").mkdir()
    (where / "shop" / "app.py").write_text("# shop/app.py\n" + code[1])


def bus_in(where: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("BUS_APP", "BUS_NATS_URL")}
    full |= {"BUS_DATA_DIR": str(where / ".bus"), **env}
    return subprocess.run(
        [BUS, *args], cwd=where, env=full, capture_output=True, text=True, timeout=60, check=False
    )


def event_types(schema_output: str) -> set[str]:
    return set(json.loads(schema_output)["$defs"])


def test_app_modules_are_found_in_the_current_directory_or_app_dir(tmp_path: Path) -> None:
    write_shop(tmp_path)
    here = bus_in(tmp_path, "schema", "--app", "shop.app:app")
    assert here.returncode == 0, here.stderr
    assert "OrderPlaced" in event_types(here.stdout)
    elsewhere = bus_in(tmp_path / "shop", "schema", "--app", "shop.app:app", "--app-dir", "..")
    assert "OrderPlaced" in event_types(elsewhere.stdout)
    missing = bus_in(tmp_path / "shop", "schema", "--app", "shop.app:app")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: cannot import 'shop.app'"), missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("shop.app", "module:attribute"),
        ("shop.app:nothing", "is not a bus.App"),
        ("shop.app:OrderPlaced", "is not a bus.App"),
        ("../../etc:passwd", "module:attribute"),
        ("shop app:app", "module:attribute"),
        ("nowhere.at.all:app", "cannot import 'nowhere.at.all'"),
    ],
)
def test_bad_app_references_get_one_line(tmp_path: Path, ref: str, error: str) -> None:
    write_shop(tmp_path)
    for args, env in ((["--app", ref], {}), ([], {"BUS_APP": ref})):
        refused = bus_in(tmp_path, "schema", *args, **env)
        assert refused.returncode == 1
        assert error in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_bus_app_and_bus_toml_name_the_app_and_app_wins(tmp_path: Path) -> None:
    write_shop(tmp_path)
    demo_events = event_types(bus_in(tmp_path, "schema").stdout)
    assert "TaskCreated" in demo_events  # nothing said: the demo
    from_env = bus_in(tmp_path, "schema", BUS_APP="shop.app:app")
    assert event_types(from_env.stdout) == {"OrderPlaced"}
    (tmp_path / "bus.toml").write_text('app = "shop.app:app"\n')
    assert event_types(bus_in(tmp_path, "schema").stdout) == {"OrderPlaced"}
    explicit = bus_in(tmp_path, "schema", "--app", "services.demo:app")
    assert event_types(explicit.stdout) == demo_events


@pytest.mark.slow
def test_the_readme_shop_runs_as_written(tmp_path: Path) -> None:
    """`bus up --app shop.app:app` in the directory holding shop/, the curl calls, then
    `bus publish` and `bus projections get` without --app, as the README shows them."""
    write_shop(tmp_path)
    up_command = readme_block("shop up").strip()
    assert up_command == "bus up --app shop.app:app"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BUS_APP", "BUS_NATS_URL")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BUS_EDGE_PORT": str(port),
        "BUS_API_KEYS": f"{KEY}:read+write+admin",
        "EDGE": f"http://127.0.0.1:{port}",
        "KEY": KEY,
        "COLUMNS": "200",  # the panel's lines unwrapped in the log
    }
    env.pop("BUS_DATA_DIR", None)  # the default, ./.bus in that directory
    log = tmp_path / "up.log"
    with running(shlex.split(up_command), log, env, cwd=tmp_path) as up:
        wait_ready(env["EDGE"], up, log)
        wait_for(lambda: "try" in log.read_text(), "the panel", up, log)
        panel = log.read_text()
        assert "bus publish orders.o1.placed '{\"total\": 1}'" in panel
        assert "bus projections get revenue all" in panel
        assert "tasks" not in panel
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_block("shop")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, f"--- stdout\n{ran.stdout}\n--- stderr\n{ran.stderr}"
        assert '"state":{"orders":1,"total":42}' in ran.stdout
        printed = json.loads(ran.stdout[ran.stdout.index("\n{\n") :])
        assert printed == {"key": "all", "seq": 2, "state": {"orders": 2, "total": 50}}
        running_app = bus_in(tmp_path, "schema")
        assert event_types(running_app.stdout) == {"OrderPlaced"}  # the running bus up's
        told = bus_in(tmp_path, "schema", BUS_APP="services.demo:app")
        assert "TaskCreated" in event_types(told.stdout)  # BUS_APP comes first
        listed = httpx.get(
            f"{env['EDGE']}/api/v1/components", headers={"Authorization": f"Bearer {KEY}"}
        ).json()
        by_name = {c["name"]: c for c in listed}
        # bus up, the server it started, and the responder to rebuilds of its projection
        assert set(by_name) == {"shop", "nats-server", "projector"}
        assert by_name["projector"]["endpoints"] == ["bus.projector.rebuild.revenue"]
        for component in listed:
            if component["kind"] != "micro":
                assert httpx.get(component["health_url"]).status_code == 200, component
        assert by_name["shop"]["health_url"] == f"{env['EDGE']}/health"
    assert up.returncode == 0


@pytest.mark.slow
def test_the_readme_test_of_the_shop_passes(tmp_path: Path) -> None:
    write_shop(tmp_path)
    test = readme_block("shop test", "python")
    assert test.startswith("# test_shop.py, beside shop/\n")
    (tmp_path / "test_shop.py").write_text(test)
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
