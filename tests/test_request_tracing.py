"""A request's trace across processes: `bus edge` asks, `bus worker` answers (hosting the
demo's `tasks.get`), both exporting OTLP/HTTP to a receiver run by the test. The edge's
CLIENT span is the parent of the worker's SERVER span, in the HTTP request's trace."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bus import EmbeddedServer
from bus._server import free_port
from tests.otlp import Receiver
from tests.processes import BUS, running, traced_env, wait_for, wait_ready

KEY = "rpc-trace-key"


@pytest.mark.slow
def test_the_callers_client_span_is_the_parent_of_the_responders_server_span(
    receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        env = traced_env(server.url, tmp_path, port, KEY, receiver.url)
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
        with contextlib.ExitStack() as stack:
            worker_log, edge_log = tmp_path / "worker.log", tmp_path / "edge.log"
            worker = stack.enter_context(running([BUS, "worker"], worker_log, env))
            edge = stack.enter_context(running([BUS, "edge"], edge_log, env))
            wait_ready(base, edge, edge_log)

            def served() -> bool:
                found = httpx.get(f"{base}/api/v1/components", headers=auth, timeout=2).json()
                micro = [c for c in found if c["kind"] == "micro" and c["name"] == "tasks"]
                offers = [c["capabilities"] for c in found if c["name"] == "tasks-worker"]
                return (
                    any("tasks.get" in c["endpoints"] for c in micro)
                    and offers
                    and "responder:tasks.get" in offers[0]
                )

            wait_for(served, "the worker's tasks.get responder", worker, worker_log)
            asked = httpx.post(
                f"{base}/api/v1/requests/tasks.get", json={"id": "nobody-made-me"}, headers=auth
            )
            assert asked.status_code == 404, asked.text
            spans = _collect(receiver)
        assert [p.returncode for p in (worker, edge)] == [0, 0]  # SIGTERM: clean exits

    client = next(s for svc, s in spans if svc == "tasks-edge" and s.name == "request tasks.get")
    assert client.kind == Span.SPAN_KIND_CLIENT
    http = next(s for svc, s in spans if s.span_id == client.parent_span_id)
    assert http.kind == Span.SPAN_KIND_SERVER  # the edge's HTTP request span
    answered = next(
        s for svc, s in spans if svc == "tasks-worker" and s.kind == Span.SPAN_KIND_SERVER
    )
    assert answered.name == "process tasks.get"
    assert answered.trace_id == client.trace_id
    assert answered.parent_span_id == client.span_id
    attributes = {a.key: a.value.string_value for a in answered.attributes}
    assert attributes["rpc.service"] == "tasks"
    assert attributes["rpc.response.status_code"] == "404"


def _collect(receiver: Receiver) -> list[tuple[str, Span]]:
    """The spans once both sides have exported theirs (batches leave every 100 ms)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = receiver.received()
        names = {(svc, s.name) for svc, s in spans}
        if {("tasks-edge", "request tasks.get"), ("tasks-worker", "process tasks.get")} <= names:
            return spans
        time.sleep(0.1)
    raise AssertionError(f"spans only: {sorted({(svc, s.name) for svc, s in receiver.received()})}")
