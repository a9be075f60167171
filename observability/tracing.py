"""Tracing set-up from the standard `OTEL_*` variables: OTLP/HTTP export, or nothing.

With no exporter endpoint configured (or `OTEL_SDK_DISABLED=true`) no SDK provider is
installed, and the bus's hooks see tracing as off: near-zero cost. The sampler comes from
`OTEL_TRACES_SAMPLER` / `_ARG` (e.g. `parentbased_traceidratio`, `0.1`), the service name
from `OTEL_SERVICE_NAME` (default: the component's name).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Health and scrape routes are polled all day; their spans would drown the real ones.
EXCLUDED_URLS = "/metrics,/livez,/readyz"


def enabled(endpoints: tuple[str, ...] = ENDPOINTS) -> bool:
    """Whether one of `endpoints` is set (and the SDK is not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(os.environ.get(name) for name in endpoints)


def resource(component: str) -> Resource:
    """What traces and logs say they come from: `OTEL_SERVICE_NAME`, else the component."""
    return Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or component})


def setup(component: str) -> TracerProvider | None:
    """Install an exporting tracer provider when configured; returns it (to flush at exit)."""
    if not enabled():
        return None
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")  # stable HTTP conventions
    provider = TracerProvider(resource=resource(component))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def instrument(api: object) -> None:
    """Server spans for a FastAPI app, with the stable HTTP conventions; a no-op when off."""
    if not enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(api, excluded_urls=EXCLUDED_URLS)  # type: ignore[arg-type]
