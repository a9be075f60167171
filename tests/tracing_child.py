"""Run by test_tracing in a child process (a process has one tracer provider): publish a
root event, let a handler publish a follow-up, and report the spans and traceparents seen."""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from bus import Bus, Envelope, current_bus

from .domain import JOBS, JobCreated, JobDone


async def main(url: str, ratio: float) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    done = asyncio.Event()

    async def work(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        await current_bus().publish(JobDone(result="ok"), "c1")

    async def finish(event: JobDone, envelope: Envelope[JobDone]) -> None:
        done.set()

    async with Bus(url, streams=[JOBS]) as bus:
        await bus.consume(work, durable="work")
        await bus.consume(finish, durable="finish")
        first = await bus.publish(JobCreated(title="t"), "c1")
        await asyncio.wait_for(done.wait(), 10)
        stored = await bus.read("JOBS", first.seq, 2)
        seen = [m.headers["traceparent"] for m in stored]
    return {"traceparents": seen, "spans": sorted(s.name for s in exporter.get_finished_spans())}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2])))))
