"""Logs as structlog JSON lines on stdout (a readable console on a terminal).

Every line carries `component`, and inside a span `trace_id`, `span_id` and `trace_flags` at
the top level (the OpenTelemetry spec for non-OTLP logs; structlog's recipe nests them, which
Loki's derived fields would not find). Standard-library loggers go through the same pipeline.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

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
) -> None:
    """Route all logging through structlog; `extra` processors add fields (e.g. event_id).

    JSON lines unless stdout is a terminal; `json=True` forces them (`--json` on the CLI)."""

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
    logging.basicConfig(level=level, handlers=[handler], force=True)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
