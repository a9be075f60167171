"""`bus kv get|put|del|ls|watch` against a real server (the demo app's `settings` bucket),
including bad input: in process with click's runner, and once as the installed command."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli.main import main
from tests.test_cli import bus_cli


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Outcome]


@pytest.fixture
def kv(nats_url: str, tmp_path: Path) -> Run:
    env = {"BUS_NATS_URL": nats_url, "BUS_DATA_DIR": str(tmp_path), "BUS_APP": None}

    def run(*args: str, stdin: str | None = None) -> Outcome:
        result = CliRunner().invoke(main, ["kv", *args], input=stdin, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    return run


def one_line_error(proc: Outcome) -> str:
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: "), proc.stderr
    return " ".join(proc.stderr.split())  # rich wraps at the terminal width


def ok(proc: Outcome) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_put_get_ls_del_with_revisions(kv: Run) -> None:
    first = json.loads(ok(kv("put", "settings", "theme", '{"dark": true}', "--create", "--json")))
    assert first == {"bucket": "settings", "key": "theme", "revision": 1}
    ok(kv("put", "settings", "limits.api", "-", stdin="[1, 2]"))
    got = json.loads(ok(kv("get", "settings", "theme", "--json")))
    assert (got["value"], got["revision"], got["operation"]) == ({"dark": True}, 1, "put")
    assert '"dark": true' in ok(kv("get", "settings", "theme"))

    second = json.loads(ok(kv("put", "settings", "theme", "false", "--revision", "1", "--json")))
    assert second["revision"] == 3
    stale = one_line_error(kv("put", "settings", "theme", "0", "--revision", "1"))
    assert "expected revision 1" in stale
    assert "revision 3" in stale
    assert "exists" in one_line_error(kv("put", "settings", "theme", "0", "--create"))

    listed = json.loads(ok(kv("ls", "settings", "--json")))
    assert [(e["key"], e["value"]) for e in listed] == [("limits.api", [1, 2]), ("theme", False)]
    assert [
        e["key"] for e in json.loads(ok(kv("ls", "settings", "--prefix", "lim", "--json")))
    ] == ["limits.api"]
    assert "theme" in ok(kv("ls", "settings"))

    assert "expected revision 1" in one_line_error(
        kv("del", "settings", "theme", "--revision", "1")
    )
    ok(kv("del", "settings", "theme", "--revision", "3"))
    assert "no key 'theme'" in one_line_error(kv("get", "settings", "theme"))
    assert "no key 'theme'" in one_line_error(kv("del", "settings", "theme"))


def test_watch_prints_every_change_in_order(kv: Run) -> None:
    for n in range(3):
        ok(kv("put", "settings", f"room.{n}", str(n)))
    ok(kv("del", "settings", "room.1"))
    ok(kv("put", "settings", "hall", "1"))
    lines = ok(kv("watch", "settings", "room.*", "--after-revision", "0", "--count", "4", "--json"))
    changes = [json.loads(line) for line in lines.splitlines()]
    assert [(c["revision"], c["operation"], c["value"]) for c in changes] == [
        (1, "put", 0),
        (2, "put", 1),
        (3, "put", 2),
        (4, "delete", None),
    ]
    text = ok(kv("watch", "settings", "--after-revision", "4", "--count", "1"))
    assert "hall" in text


BAD = [
    (("get", "nope", "k"), "declares no bucket 'nope'"),
    (("get", "bus_components", "k"), "declares no bucket"),
    (("get", "settings", "a..b"), "invalid subject"),
    (("put", "settings", "a b", "1"), "invalid subject"),
    (("put", "settings", "k", "{not json"), "not JSON"),
    (("put", "settings", "k", "[" * 5000 + "]" * 5000), "not JSON"),
    (("put", "settings", "k", "1", "--create", "--revision", "2"), "exclude"),
    (("watch", "settings", "a.>.b", "--count", "1"), "invalid subject"),
    (("ls", "settings", "--prefix", "a b"), "invalid subject"),
]


def test_bad_input_is_one_line_and_writes_nothing(kv: Run) -> None:
    for args, says in BAD:
        assert says in one_line_error(kv(*args)), args
    assert ok(kv("ls", "settings", "--json")).strip() == "[]"


@pytest.mark.parametrize("args", [("put", "settings", "k", "1", "--revision", "0"), ("ls",)])
def test_click_usage_errors(kv: Run, args: tuple[str, ...]) -> None:
    assert kv(*args).returncode == 2


def test_the_installed_command_has_the_verbs(nats_url: str, tmp_path: Path) -> None:
    put = bus_cli("kv", "put", "settings", "k", '"v"', "--json", url=nats_url, data_dir=tmp_path)
    assert json.loads(put.stdout)["revision"] == 1, put.stderr


def test_status_shows_the_apps_buckets_only(kv: Run, nats_url: str, tmp_path: Path) -> None:
    ok(kv("put", "settings", "k", "1"))
    env = {"BUS_NATS_URL": nats_url, "BUS_DATA_DIR": str(tmp_path), "BUS_APP": None}
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    streams = {s["name"]: s["messages"] for s in json.loads(result.stdout)["streams"]}
    assert streams["KV_settings"] == 1
    assert not any(name.startswith("KV_bus_") for name in streams)
