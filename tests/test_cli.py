"""The `bus` command, run as a subprocess against a real server, including bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BUS = str(Path(sys.executable).parent / "bus")


def bus_cli(
    *args: str, url: str | None, data_dir: Path, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUS_DATA_DIR": str(data_dir)}
    env.pop("BUS_NATS_URL", None)
    if url:
        env["BUS_NATS_URL"] = url
    return subprocess.run(
        [BUS, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli(nats_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return bus_cli(*args, url=nats_url, data_dir=tmp_path, stdin=stdin)

    return run


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr


async def test_publish_then_tail_and_streams(cli, bus) -> None:  # type: ignore[no-untyped-def]
    from bus import StreamSpec

    await bus.streams.ensure(StreamSpec.for_domain("tasks"))
    first = cli("publish", "tasks.t1.created", '{"title": "hello"}', "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert (result["stream"], result["seq"], result["duplicate"]) == ("TASKS", 1, False)

    again = cli(
        "publish", "tasks.t1.created", '{"title": "hello"}', "--id", result["event_id"], "--json"
    )
    assert json.loads(again.stdout)["duplicate"] is True

    tailed = cli("tail", "tasks.>", "--from-seq", "1", "--count", "1", "--json")
    assert tailed.returncode == 0, tailed.stderr
    record = json.loads(tailed.stdout.splitlines()[0])
    assert record["type"] == "TaskCreated"
    assert record["data"] == {"title": "hello", "fail_times": 0}

    listed = json.loads(cli("streams", "--json").stdout)
    assert {s["name"]: s["messages"] for s in listed} == {"DLQ_TASKS": 0, "TASKS": 1}


async def test_publish_expected_version_conflict(cli, bus) -> None:  # type: ignore[no-untyped-def]
    from bus import StreamSpec

    await bus.streams.ensure(StreamSpec.for_domain("tasks"))
    assert (
        cli("publish", "tasks.a.created", '{"title": "x"}', "--expected-version", "0").returncode
        == 0
    )
    err = one_line_error(
        cli("publish", "tasks.a.created", '{"title": "x"}', "--expected-version", "0")
    )
    assert "expected version 0" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("publish", "tasks.t1.created", "{not json"), "not a valid TaskCreated"),
        (("publish", "tasks.t1.created", '{"title": 5}'), "Expected `str`, got `int`"),
        (("publish", "tasks.t1.created", '{"fail_times": 1}'), "missing required field `title`"),
        (("publish", "tasks.t1.nope", "{}"), "no event type for tasks.*.nope"),
        (("publish", "tasks.t 1.created", "{}"), "invalid subject"),
        (("publish", "tasks.*.created", "{}"), "invalid subject"),
        (("publish", "tasks..created", "{}"), "invalid subject"),
        (("publish", "tasks.t1", "{}"), "expected <domain>.<aggregate_id>.<event_name>"),
        (("publish", "tasks.t1.created", "{}", "--app", "nope.module:app"), "cannot import"),
        (("publish", "tasks.t1.created", "{}", "--app", "services.demo"), "module:attribute"),
        (("tail", "tasks.>.x"), "'>' must be the last token"),
        (("dlq", "list", "NOPE"), "DLQ_NOPE"),
        (("dlq", "replay", "NOPE", "--seq", "1"), "DLQ_NOPE"),
        (("up", "--app", "nope.module:app"), "cannot import"),
        (("projector", "--app", "services.demo:missing"), "is not a bus.App"),
        (("edge", "--app", "nope.module:app"), "cannot import"),
        (("projections", "list", "--app", "services"), "module:attribute"),
    ],
)
def test_bad_input_gives_one_clear_line(cli, args, message) -> None:  # type: ignore[no-untyped-def]
    assert message in one_line_error(cli(*args))


def test_publish_without_a_stream_says_so(cli) -> None:  # type: ignore[no-untyped-def]
    assert "no stream captures" in one_line_error(
        cli("publish", "tasks.t1.created", '{"title": "x"}')
    )


async def test_payload_from_stdin_and_oversized(cli, bus) -> None:  # type: ignore[no-untyped-def]
    from bus import StreamSpec

    await bus.streams.ensure(StreamSpec.for_domain("tasks"))
    small = cli("publish", "tasks.t1.created", "-", "--json", stdin='{"title": "piped"}')
    assert json.loads(small.stdout)["seq"] == 1
    huge = json.dumps({"title": "x" * 2_000_000})  # past the server's 1 MiB max_payload
    err = one_line_error(cli("publish", "tasks.t1.created", "-", stdin=huge))
    assert "maximum payload" in err.lower()
    assert (await bus.streams.info("TASKS")).messages == 1


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    proc = bus_cli("streams", url=None, data_dir=tmp_path)
    assert "bus up" in one_line_error(proc)
    proc = bus_cli("streams", url="nats://127.0.0.1:1", data_dir=tmp_path)
    assert "cannot connect" in one_line_error(proc)


def test_schema_lists_the_demo_events(tmp_path: Path) -> None:
    proc = bus_cli("schema", url=None, data_dir=tmp_path)
    schema = json.loads(proc.stdout)
    assert {"TaskCreated", "TaskProgressed", "TaskCompleted", "TaskFailed"} <= set(schema["$defs"])


@pytest.mark.slow
def test_up_runs_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    """`bus up` with no NATS URL: embedded server, demo worker, retries, DLQ, clean SIGTERM."""
    env = {**os.environ, "BUS_DATA_DIR": str(tmp_path), "BUS_EDGE_PORT": "0"}
    env.pop("BUS_NATS_URL", None)
    output = tmp_path / "up.log"
    log = output.open("w")
    with subprocess.Popen([BUS, "up", "--json"], env=env, stdout=log, stderr=log) as proc:
        try:
            status = ready_line(output)
            assert status["streams"] == ["TASKS"]
            assert status["handlers"] == ["tasks-worker"]
            with urllib.request.urlopen(status["edge_url"] + "/readyz", timeout=5) as ready:
                assert json.load(ready) == {"status": "pass"}
            _exercise_demo(tmp_path)
            server_pid = int(json.loads((tmp_path / "server.json").read_text())["pid"])
            assert server_pid == proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    log.close()
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "nats")], capture_output=True, check=False
    )
    assert leftovers.stdout == b"", "nats-server outlived bus up"


def ready_line(output: Path, timeout: float = 30) -> dict[str, object]:
    """The status line `bus up --json` prints among its JSON log lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in output.read_text().splitlines():
            if line.startswith("{") and "edge_url" in (found := json.loads(line)):
                return found  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"bus up printed no status line:\n{output.read_text()[-2000:]}")


def _exercise_demo(data_dir: Path) -> None:
    """A task that completes, and one that fails five times into the dead-letter stream."""
    ok = bus_cli("publish", "tasks.ok.created", '{"title": "fine"}', url=None, data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr
    doomed = '{"title": "doomed", "fail_times": 9}'
    assert (
        bus_cli("publish", "tasks.bad.created", doomed, url=None, data_dir=data_dir).returncode == 0
    )

    deadline = time.monotonic() + 30
    letters: list[dict[str, object]] = []
    while time.monotonic() < deadline and not letters:
        out = bus_cli("dlq", "list", "TASKS", "--json", url=None, data_dir=data_dir)
        letters = json.loads(out.stdout) if out.returncode == 0 else []
        time.sleep(0.5)
    assert [entry["original_subject"] for entry in letters] == ["tasks.bad.created"]
    assert "failed 5 times" in str(letters[0]["reason"])

    args = ("tail", "tasks.ok.*", "--from-seq", "1", "--count", "3", "--json")
    tailed = bus_cli(*args, url=None, data_dir=data_dir)
    types = [json.loads(line)["type"] for line in tailed.stdout.splitlines()]
    assert types == ["TaskCreated", "TaskProgressed", "TaskCompleted"]


@pytest.mark.parametrize(
    "args",
    [
        ("publish", "tasks.t1.created", '{"title": "x"}'),
        ("tail", "tasks.>"),
        ("streams",),
        ("dlq", "list", "TASKS"),
        ("dlq", "replay", "TASKS", "--seq", "1"),
        ("projections", "list"),
        ("projections", "get", "task", "t1"),
        ("projections", "rebuild", "task"),
        ("aggregate", "show", "tasks", "t1"),
        ("components",),
        ("status",),
        ("worker",),
        ("projector",),
        ("edge",),
        ("up",),
    ],
)
def test_every_verb_says_plainly_when_nats_is_unreachable(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    proc = bus_cli(*args, url="nats://127.0.0.1:1", data_dir=tmp_path)
    assert "cannot connect to nats://127.0.0.1:1" in one_line_error(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tail", "tasks.>", "--count", "0"), "--count"),
        (("tail",), "PATTERN"),
        (("publish", "tasks.t1.created"), "PAYLOAD"),
        (("projections", "get", "task"), "KEY"),
        (("projections", "get", "task", "t1", "--after-seq", "0"), "--after-seq"),
        (("aggregate", "show", "tasks"), "ID"),
        (("bench", "--runs", "0"), "--runs"),
        (("bench", "--scenario", "nope"), "--scenario"),
        (("demo", "traffic", "--rate", "0"), "--rate"),
        (("up", "--no-such-option"), "--no-such-option"),
        (("nope",), "No such command"),
    ],
)
def test_wrong_arguments_are_refused_without_a_traceback(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    proc = bus_cli(*args, url="nats://127.0.0.1:1", data_dir=tmp_path)
    assert proc.returncode == 2  # click's usage error
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_tracing_bench_measures_every_mode(tmp_path: Path) -> None:
    """A tiny `bus bench --scenario tracing --json`: off, 0%, 10% and 100% each publish and
    consume in a child of their own. (Figures are the harness's business, never asserted.)"""
    args = ("--scenario", "tracing", "--runs", "1", "--messages", "300", "--json")
    proc = bus_cli("bench", *args, url=None, data_dir=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["median"]) == {"off", "0%", "10%", "100%"}
    for figures in report["median"].values():
        assert figures["publish"] > 0
        assert figures["consume"] > 0
    assert report["ratio_to_off"]["off"] == {"publish": 1.0, "consume": 1.0}


def test_a_bench_child_reports_its_own_peak_memory_not_its_parents() -> None:
    """The memory figures come from children; Linux's ru_maxrss would report the parent's
    peak in them (it survives exec), so a child of this 200 MB process must read far less."""
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: resident
    code = "from services.bench.memory import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < float(out.stdout) < 150
    del ballast


def test_the_messaging_bench_measures_every_case_on_both_sides(tmp_path: Path) -> None:
    """A tiny `bus bench --json`: every case has raw and bus rates; the ceilings and the
    memory probe ran too.
    (Figures are the harness's business, never asserted.)"""
    args = ("--scenario", "messaging", "--runs", "2", "--messages", "300", "--json")
    proc = bus_cli("bench", *args, url=None, data_dir=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    cases = {case["case"]: case for case in report["cases"]}
    assert set(cases) == {
        "publish awaited", "publish pipelined", "consume + ack", "consume, batch handler"
    }  # fmt: skip
    for case in cases.values():
        assert len(case["raw"]["runs"]) == len(case["bus"]["runs"]) == 2
        assert case["raw"]["min"] > 0
        assert case["bus"]["min"] > 0
    assert len(cases["publish pipelined"]["ceiling"]["runs"]) == 2
    assert len(cases["consume + ack"]["ceiling"]["runs"]) == 2
    memory = report["consumer_memory"]
    assert (memory["backlog"], memory["handled_few"]) == (1500, 15)
    assert memory["peak_rss_mb_few"] > 0
    assert memory["peak_rss_mb_all"] > 0
