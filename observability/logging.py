"""Logs as structlog JSON lines on stdout (a readable console on a terminal).

Every line carries `component`, and inside a span `trace_id`, `span_id` and `trace_flags` at
the top level (the OpenTelemetry spec for non-OTLP logs; structlog's recipe nests them, which
Loki's derived fields would not find). Standard-library loggers go through the same pipeline.
With an OTLP endpoint set, every record is also exported over OTLP/HTTP (the collector hands
them to Loki), the same JSON as its body and the span it was written in as its context.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from . import tracing

# Where OTLP logs go; OTEL_LOGS_EXPORTER=none keeps them on stdout only.
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")

Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


def add_trace(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
        event["trace_flags"] = f"{int(context.trace_flags):02x}"
    return event


def setup(
    component: str,
    extra: tuple[Processor, ...] = (),
    level: int = logging.INFO,
    json: bool | None = None,
) -> LoggerProvider | None:
    """Route all logging through structlog; `extra` processors add fields (e.g. event_id).

    JSON lines unless stdout is a terminal; `json=True` forces them (`--json` on the CLI).
    Returns the OTLP log provider when exporting (its `shutdown` flushes at exit)."""

    def add_component(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("component", component)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
        add_component,
        add_trace,
        *extra,
    ]
    terminal = sys.stdout.isatty() if json is None else not json
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if terminal else structlog.processors.JSONRenderer()
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if not terminal:
        final.append(structlog.processors.dict_tracebacks)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[*final, renderer]
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [handler]
    provider = _exporting(component)
    if provider is not None:
        otlp = _Exporting(LoggingHandler(logger_provider=provider))
        otlp.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[final[0], structlog.processors.dict_tracebacks, _json],
            )
        )
        handlers.append(otlp)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return provider


_json = structlog.processors.JSONRenderer()
_STRUCTLOG_ONLY = ("_logger", "_name")  # objects structlog hangs on a record for its formatter


class _Exporting(logging.Handler):
    """Hands the SDK's handler each record rendered as its JSON line (the SDK would turn
    structlog's objects on the record into attributes it cannot export). The SDK's own
    records stay out: an export failure must not feed the export."""

    def __init__(self, sdk: LoggingHandler) -> None:
        super().__init__()
        self.sdk = sdk

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry") and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in vars(record).items() if k not in _STRUCTLOG_ONLY}
        self.sdk.emit(logging.makeLogRecord({**fields, "msg": self.format(record), "args": ()}))

    def flush(self) -> None:
        self.sdk.flush()


def _exporting(component: str) -> LoggerProvider | None:
    """A provider batching records to the OTLP/HTTP endpoint, when one is configured."""
    if not tracing.enabled(ENDPOINTS) or os.environ.get("OTEL_LOGS_EXPORTER") == "none":
        return None
    provider = LoggerProvider(resource=tracing.resource(component))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    return provider
