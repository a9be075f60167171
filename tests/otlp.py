"""An OTLP/HTTP trace and log receiver for tests: services export to it as they would to a
collector."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps every span and log record it is sent, with its
    service."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, Span]] = []
        self.logs: list[tuple[str, LogRecord]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[tuple[str, Span]]:
        """(service, span) for every span received so far."""
        with self.lock:
            return list(self.spans)

    def received_logs(self) -> list[tuple[str, LogRecord]]:
        """(service, log record) for every record received so far."""
        with self.lock:
            return list(self.logs)


def _service(resource: Resource) -> str:
    return next(a.value.string_value for a in resource.attributes if a.key == "service.name")


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            if self.path == "/v1/logs":
                for resource_logs in ExportLogsServiceRequest.FromString(body).resource_logs:
                    service = _service(resource_logs.resource)
                    for scope_logs in resource_logs.scope_logs:
                        self.server.logs.extend((service, r) for r in scope_logs.log_records)
            else:
                for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
                    service = _service(resource_spans.resource)
                    for scope in resource_spans.scope_spans:
                        self.server.spans.extend((service, span) for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass
