"""One trace across every hop: the edge, a worker and a projector, each its own process,
exporting OTLP/HTTP to a receiver run by the test; and the log lines carry the trace id."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bus import EmbeddedServer
from bus._server import free_port
from tests import tracing_child
from tests.otlp import Receiver
from tests.processes import BUS, running, traced_env, wait_ready

KEY = "trace-key"


@pytest.mark.slow
def test_one_trace_from_http_through_worker_and_projector(
    receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        env = traced_env(server.url, tmp_path, port, KEY, receiver.url)
        with contextlib.ExitStack() as stack:
            procs = [
                stack.enter_context(running([BUS, verb], tmp_path / f"{verb}.log", env))
                for verb in ("worker", "projector")
            ]
            time.sleep(1.5)  # they create the stream and consumers before the edge publishes
            log = tmp_path / "edge.log"
            procs.append(stack.enter_context(running([BUS, "edge"], log, env)))
            base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
            wait_ready(base, procs[-1], log)
            posted = httpx.post(
                f"{base}/api/v1/events/tasks.tr1.created", json={"title": "traced"}, headers=auth
            )
            assert posted.status_code == 201, posted.text
            got = httpx.get(
                f"{base}/api/v1/projections/task/tr1",
                params={"after_seq": posted.json()["seq"]},
                headers=auth,
                timeout=10,
            )
            assert got.status_code == 200
            scraped = httpx.get(
                f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}
            ).text
            spans = _collect(receiver, {"tasks-edge", "tasks-worker", "tasks-projector"})
        assert [p.returncode for p in procs] == [0, 0, 0]  # SIGTERM: clean exits

    server_span = next(
        s for svc, s in spans if svc == "tasks-edge" and s.kind == Span.SPAN_KIND_SERVER
    )
    trace_id = server_span.trace_id
    in_trace = [(svc, s) for svc, s in spans if s.trace_id == trace_id]
    assert {svc for svc, _ in in_trace} >= {"tasks-edge", "tasks-worker", "tasks-projector"}

    publish = next(
        s for svc, s in in_trace if svc == "tasks-edge" and s.name == "publish tasks.{id}.created"
    )
    assert publish.kind == Span.SPAN_KIND_PRODUCER
    assert publish.parent_span_id  # under the HTTP request's span
    process = next(s for svc, s in in_trace if s.name == "process tasks-worker")
    assert process.kind == Span.SPAN_KIND_CONSUMER
    assert process.parent_span_id == publish.span_id  # a child of the producer...
    assert [link.span_id for link in process.links] == [publish.span_id]  # ...and linked
    follow_up = next(s for svc, s in in_trace if s.name == "publish tasks.{id}.completed")
    assert follow_up.parent_span_id == process.span_id
    projected = [s for svc, s in in_trace if svc == "tasks-projector" and s.name == "process task"]
    assert projected
    assert any(link.span_id == publish.span_id for s in projected for link in s.links)

    # The publish latency histogram points at the request's trace (an exemplar).
    assert f'trace_id="{trace_id.hex()}"' in scraped

    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    done = next(line for line in lines if "completed" in line.get("event", ""))
    assert done["trace_id"] == trace_id.hex()
    assert done["component"] == "tasks-worker"
    assert done["event_id"] == posted.json()["id"]


def _collect(receiver: Receiver, services: set[str]) -> list[tuple[str, Span]]:
    """The spans once every service has exported some (batches leave every 100 ms)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = receiver.received()
        if services <= {svc for svc, _ in spans} and any(
            s.name == "process task" for _, s in spans
        ):
            time.sleep(0.5)  # the rest of the batches
            return receiver.received()
        time.sleep(0.1)
    raise AssertionError(f"spans only from {sorted({svc for svc, _ in receiver.received()})}")


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_sampling_follows_the_first_decision_downstream(nats_url: str, ratio: float) -> None:
    """Unsampled: no span anywhere, yet the trace id reaches the follow-up event (unsampled);
    sampled: publish, process and the follow-up's publish, all in one trace."""
    found = tracing_child.run(nats_url, ratio)
    first, follow_up = found["traceparents"]
    assert first.split("-")[1] == follow_up.split("-")[1]  # one trace id across the hop
    sampled = ratio == 1.0
    assert all((int(tp[-2:], 16) & 1) == sampled for tp in (first, follow_up))
    if sampled:
        assert {"publish jobs.{id}.created", "process work", "publish jobs.{id}.done"} <= set(
            found["spans"]
        )
    else:
        assert found["spans"] == []
