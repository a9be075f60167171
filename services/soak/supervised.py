"""A `bus <verb>` child process that dies with its parent, and what it weighs (from /proc).

Linux only. Used by `bus soak` to run and watch the services it restarts around.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

EXIT_BOUND = 15.0  # seconds a service has to exit after SIGTERM


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """No orphan if the soak itself is killed (Linux parent-death signal)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Service:
    """One `bus <verb>` subprocess on the demo app, with JSON logs in a file."""

    def __init__(self, verb: str, env: dict[str, str], log: Path) -> None:
        self.verb, self.log = verb, log
        command = [str(Path(sys.executable).with_name("bus")), verb, "--json"]
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def terminate(self) -> str:
        """SIGTERM and wait; what happened, in words (killed past EXIT_BOUND)."""
        if self.process.poll() is not None:
            return f"had exited already with {self.process.returncode}"
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.process.wait, EXIT_BOUND)
        except subprocess.TimeoutExpired:
            self.kill()
            return f"still running {EXIT_BOUND:g} s after SIGTERM: killed"
        return f"exit {code} after {time.monotonic() - started:.2f} s"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def errors_logged(self) -> int:
        """Log lines at level error or worse (dead letters are logged so: expected ones too)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if re.search(r'"level": "(error|critical)"', line))


def rss_mb(pid: int | None) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def open_fds(pid: int | None) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
