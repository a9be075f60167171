"""Run by the tracing tests in a child process (a process has one tracer provider): publish a
root event whose handler fails once, then publishes a follow-up; a batch handler takes the
follow-up and three more published together. Reports the spans and traceparents seen."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from bus import Backoff, Bus, Envelope, current_bus

from .domain import JOBS, JobCreated, JobDone

BATCHED = 3  # follow-ups published in one publish_many, besides the handler's


def run(nats_url: str, ratio: float) -> dict[str, Any]:
    """What the child saw, at this sampling ratio."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.tracing_child", nats_url, str(ratio)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    ).stdout
    found: dict[str, Any] = json.loads(out)
    return found


async def main(url: str, ratio: float) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    done = asyncio.Event()
    tallied: list[str] = []
    all_tallied = asyncio.Event()

    async def work(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        if envelope.attempt <= event.fail_times:
            raise ValueError("not this time")
        await current_bus().publish(JobDone(result="ok"), "c1")

    async def finish(event: JobDone, envelope: Envelope[JobDone]) -> None:
        done.set()

    async def tally(batch: list[Envelope[JobDone]]) -> None:
        tallied.extend(envelope.id for envelope in batch)
        if len(tallied) > BATCHED:
            all_tallied.set()

    async with Bus(url, streams=[JOBS]) as bus:
        await bus.consume(work, durable="work", backoff=Backoff(base=0.01))
        await bus.consume(finish, durable="finish")
        first = await bus.publish(JobCreated(title="t", fail_times=1), "c1")
        await asyncio.wait_for(done.wait(), 10)
        stored = await bus.read("JOBS", first.seq, 2)
        seen = [m.headers["traceparent"] for m in stored]
        await bus.consume(tally, durable="tally")
        await bus.publish_many((JobDone(result=str(n)), f"b{n}") for n in range(BATCHED))
        await asyncio.wait_for(all_tallied.wait(), 10)
    finished = exporter.get_finished_spans()
    return {
        "traceparents": seen,
        "spans": sorted(s.name for s in finished),
        "details": [_details(s) for s in finished],
    }


def _details(span: ReadableSpan) -> dict[str, object]:
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent": None if parent is None else f"{parent.span_id:016x}",
        "remote_parent": parent is not None and parent.is_remote,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2])))))
