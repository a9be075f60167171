"""Running `bus` (and other) processes in tests: logged to a file, waited for, always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

BUS = str(Path(sys.executable).with_name("bus"))


@contextlib.contextmanager
def running(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess writing to `log`, stopped with SIGTERM (and reaped) on the way out."""
    with log.open("wb") as output:
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(
    check: Callable[[], object],
    what: str,
    process: subprocess.Popen[bytes],
    log: Path,
    seconds: float = 30,
) -> None:
    """Poll `check()` until it returns something truthy; fail with the process's log if it dies."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        assert process.poll() is None, f"{log.name} exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}:\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.2)


def wait_ready(edge: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the edge at `edge` answers `/readyz` with 200."""
    wait_for(lambda: httpx.get(f"{edge}/readyz", timeout=1).status_code == 200, edge, process, log)


def traced_env(
    nats_url: str, data_dir: Path, edge_port: int, key: str, otlp: str
) -> dict[str, str]:
    """The environment of service processes that export their spans to `otlp` quickly."""
    env = {
        **os.environ,
        "BUS_NATS_URL": nats_url,
        "BUS_DATA_DIR": str(data_dir),
        "BUS_EDGE_PORT": str(edge_port),
        "BUS_API_KEYS": f"{key}:read+write",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    env.pop("OTEL_SERVICE_NAME", None)
    return env
