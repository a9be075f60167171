"""Telemetry is passed in, not global: a Bus reports to the observer and traces with the
tracer provider it was given; another Bus, or another registry, sees none of it."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bus import Bus
from observability.metrics import Metrics
from tests.domain import JOBS, JobCreated, eventually


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.render(None)[0].decode()
    samples = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


async def test_a_bus_counts_into_the_metrics_it_was_given(nats_url: str) -> None:
    mine, other = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    handled: list[JobCreated] = []

    async def work(event: JobCreated) -> None:
        handled.append(event)
        if event.fail_times:
            raise RuntimeError("asked to fail")

    async with Bus(nats_url, streams=[JOBS], observer=mine) as bus, Bus(nats_url) as quiet:
        await bus.consume(work, durable="counted", max_deliver=1)
        await bus.publish_many([(JobCreated(title=str(i)), f"m{i}") for i in range(5)])
        await bus.publish(JobCreated(title="doomed", fail_times=1), "m9")
        await quiet.read("JOBS", 1, 10)  # a bus without an observer works as before
        await eventually(lambda: counted(mine, "bus_dead_letters_total") == 1)
    sent = "messaging_client_sent_messages_total"
    assert counted(mine, sent, outcome="ok", messaging_destination_name="JOBS") == 6
    assert counted(mine, sent, outcome="ok", messaging_destination_name="DLQ_JOBS") == 1
    assert counted(mine, "messaging_client_consumed_messages_total", outcome="ok") == 5
    assert counted(mine, "messaging_client_consumed_messages_total", outcome="error") == 1
    assert counted(other, "messaging_client_sent_messages_total") == 0


async def test_a_bus_traces_with_the_provider_it_was_given(nats_url: str) -> None:
    """No global provider is installed in this process: the spans come from the one passed."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Bus(nats_url, streams=[JOBS], tracer_provider=provider) as traced:
        assert traced.telemetry.tracer is not None
        await traced.publish(JobCreated(title="traced"), "t1")
    async with Bus(nats_url) as untraced:
        assert untraced.telemetry.tracer is None
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["publish jobs.{id}.created"]
