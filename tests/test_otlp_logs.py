"""Logs over OTLP: a real worker process, told of an OTLP endpoint, exports the log line it
writes while handling an event, carrying that handling's trace id, flushed when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from bus import Bus, EmbeddedServer
from services.demo import TaskCreated, app
from tests.otlp import Receiver
from tests.processes import BUS, running


async def publish(url: str) -> None:
    async with Bus(url, registry=app.registry, streams=app.streams) as bus:
        await bus.publish(TaskCreated(title="logged"), "lg1")


async def handled(url: str) -> bool:
    """Whether the worker has finished the task (started, completed: two more events)."""
    async with Bus(url, registry=app.registry) as bus:
        return (await bus.streams.info("TASKS")).messages >= 3


@pytest.mark.slow
def test_worker_log_record_arrives_with_its_trace_id(receiver: Receiver, tmp_path: Path) -> None:
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        asyncio.run(publish(server.url))
        env = {
            **os.environ,
            "BUS_NATS_URL": server.url,
            "BUS_DATA_DIR": str(tmp_path),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            # Nothing leaves before the process stops: what arrives was flushed at shutdown.
            "OTEL_BLRP_SCHEDULE_DELAY": "600000",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }
        env.pop("OTEL_SERVICE_NAME", None)
        env.pop("OTEL_LOGS_EXPORTER", None)
        log = tmp_path / "worker.log"
        with running([BUS, "worker"], log, env) as worker:
            deadline = time.monotonic() + 30
            while not asyncio.run(handled(server.url)):
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert worker.returncode == 0, log.read_text()

    records = [
        (json.loads(r.body.string_value), r)
        for service, r in receiver.received_logs()
        if service == "tasks-worker"
    ]
    fields, record = next(
        (f, r) for f, r in records if f["event"] == "task lg1 completed on attempt 1"
    )
    assert record.severity_text == "INFO"
    assert len(record.trace_id) == 16
    assert record.trace_id.hex() == fields["trace_id"]  # the stdout line's id, the same
    assert record.span_id.hex() == fields["span_id"]
    assert fields["component"] == "tasks-worker"
    worker_spans = {s.trace_id for svc, s in receiver.received() if svc == "tasks-worker"}
    assert record.trace_id in worker_spans  # Grafana's trace -> logs link finds it
    assert not any(f["logger"].startswith("opentelemetry") for f, _ in records)
