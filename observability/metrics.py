"""Prometheus metrics on one explicit registry, named as OBSERVABILITY.md lists them.

`Metrics(registry)` makes every metric on the registry it is given (a fresh one by default:
tests build their own, nothing relies on a global), and is the bus's observer:
`Bus(..., observer=metrics)`. Labels are bounded: stream, consumer, projection, outcome,
route template — never an id or a subject with ids in it. Gauges that describe JetStream
state are refreshed at scrape time by whoever serves `/metrics`, so nothing polls the server
between scrapes.
"""

from __future__ import annotations

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# A local publish takes ~100 µs: finer buckets below 5 ms than the OTel defaults.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
STREAM_CONSUMER = ["stream", "consumer"]
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """A process's metrics on one registry; also the bus's observer (bus.telemetry.Observer)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.sent = Counter(
            "messaging_client_sent_messages",
            "Messages published and acknowledged by JetStream.",
            ["messaging_destination_name", "outcome"],
            registry=r,
        )
        self.consumed = Counter(
            "messaging_client_consumed_messages",
            "Messages delivered to handlers.",
            ["messaging_consumer_group_name", "outcome"],
            registry=r,
        )
        self.operation_duration = Histogram(
            "messaging_client_operation_duration_seconds",
            "Publish round trip, from send to acknowledgement.",
            ["messaging_operation_name", "messaging_destination_name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.process_duration = Histogram(
            "messaging_process_duration_seconds",
            "Handler time per message.",
            ["messaging_consumer_group_name", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "bus_dead_letters",
            "Messages this process copied to a dead-letter stream.",
            STREAM_CONSUMER,
            registry=r,
        )
        self.http_duration = Histogram(
            "http_server_request_duration_seconds",
            "Edge HTTP requests by route template.",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_pending = Gauge(
            "bus_consumer_pending_messages",
            "Messages in the stream the consumer has not been sent yet (its lag).",
            STREAM_CONSUMER,
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "bus_consumer_ack_pending_messages",
            "Messages sent to the consumer and not acknowledged yet.",
            STREAM_CONSUMER,
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            "bus_consumer_redelivered_messages",
            "Messages the consumer has been sent more than once and not yet acknowledged.",
            STREAM_CONSUMER,
            registry=r,
        )
        self.stream_messages = Gauge(
            "bus_stream_messages", "Messages stored in the stream.", ["stream"], registry=r
        )
        self.dlq_messages = Gauge(
            "bus_dead_letter_messages",
            "Messages waiting in a dead-letter stream.",
            ["stream"],
            registry=r,
        )
        self.projection_position = Gauge(
            "bus_projection_position",
            "Stream sequence up to which the projection has seen its stream (every event of it"
            " that it reads is applied).",
            ["projection"],
            registry=r,
        )
        self.projection_lag = Gauge(
            "bus_projection_lag_events",
            "Matching events stored after the projection's position.",
            ["projection"],
            registry=r,
        )
        self.projection_failures = Gauge(
            "bus_projection_apply_failures",
            "Events the projection could not apply (sent to the dead-letter stream).",
            ["projection"],
            registry=r,
        )
        self.rebuild_progress = Gauge(
            "bus_projection_rebuild_progress_ratio",
            "Share of the stream a rebuilding generation has applied; 0 when none runs.",
            ["projection"],
            registry=r,
        )
        self.components_alive = Gauge(
            "bus_components_alive",
            "Instances of each component heartbeating in the registry.",
            ["component"],
            registry=r,
        )
        self.component_up = Gauge(
            "bus_component_up",
            "1 while every registered instance of the component heartbeats and passes (or"
            " warns on) the edge's health check; 0 once one fails.",
            ["component"],
            registry=r,
        )
        self.component_checks = Counter(
            "bus_component_health_checks",
            "Health checks of registered instances by the edge's monitor, by verdict.",
            ["component", "status"],
            registry=r,
        )

        # Request/reply, labelled by the endpoint (the subject pattern served or called).
        self.rpc_client_duration = Histogram(
            "rpc_client_call_duration_seconds",
            "Requests made, by endpoint and outcome (ok, refused, error, timeout, no_responders,"
            " circuit_open): the count is requests, those not ok the errors.",
            ["rpc_method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_server_duration = Histogram(
            "rpc_server_call_duration_seconds",
            "Requests answered, by service, endpoint and outcome (ok, bad_request, refused,"
            " error).",
            ["rpc_service", "rpc_method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.circuit_state = Gauge(
            "bus_circuit_breaker_state",
            "State of this process's circuit for an endpoint: 0 closed, 1 half-open, 2 open"
            " (listed from the endpoint's first failure on).",
            ["rpc_method"],
            registry=r,
        )
        self._requests: dict[tuple[str, str], Histogram] = {}
        self._answers: dict[tuple[str, str, str], Histogram] = {}

        self.workflow_runs = Counter(
            "bus_workflow_runs",
            "Workflow runs finished, by outcome (completed, failed, cancelled).",
            ["workflow", "outcome"],
            registry=r,
        )
        self.workflow_run_duration = Histogram(
            "bus_workflow_run_duration_seconds",
            "Workflow runs from start to end, by outcome.",
            ["workflow", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.workflow_steps = Counter(
            "bus_workflow_steps",
            "Workflow step attempts finished, by outcome (completed, failed, retried).",
            ["workflow", "step", "outcome"],
            registry=r,
        )
        self.workflow_step_duration = Histogram(
            "bus_workflow_step_duration_seconds",
            "Workflow step attempts, handler time.",
            ["workflow", "step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def published(self, destination: str, outcome: str, seconds: float, count: int) -> None:
        self.sent.labels(destination, outcome).inc(count)
        self.operation_duration.labels("publish", destination).observe(seconds, _exemplar())

    def processed(self, consumer: str, outcome: str, seconds: float, count: int) -> None:
        self.consumed.labels(consumer, outcome).inc(count)
        self.process_duration.labels(consumer, outcome).observe(seconds, _exemplar())

    def dead_lettered(self, stream: str, consumer: str) -> None:
        self.dead_letters.labels(stream, consumer).inc()

    def run_finished(self, workflow: str, outcome: str, seconds: float) -> None:
        self.workflow_runs.labels(workflow, outcome).inc()
        self.workflow_run_duration.labels(workflow, outcome).observe(seconds, _exemplar())

    def step_finished(self, workflow: str, step: str, outcome: str, seconds: float) -> None:
        self.workflow_steps.labels(workflow, step, outcome).inc()
        self.workflow_step_duration.labels(workflow, step).observe(seconds, _exemplar())

    def requested(self, endpoint: str, outcome: str, seconds: float) -> None:
        # Per request: the labelled child is looked up once (`labels()` costs as much as the
        # observation), from a table as bounded as the labels.
        child = self._requests.get((endpoint, outcome))
        if child is None:
            child = self._requests[endpoint, outcome] = self.rpc_client_duration.labels(
                endpoint, outcome
            )
        child.observe(seconds, _exemplar())

    def served(self, service: str, endpoint: str, outcome: str, seconds: float) -> None:
        child = self._answers.get((service, endpoint, outcome))
        if child is None:
            child = self._answers[service, endpoint, outcome] = self.rpc_server_duration.labels(
                service, endpoint, outcome
            )
        child.observe(seconds, _exemplar())

    def circuit_changed(self, endpoint: str, state: str) -> None:
        self.circuit_state.labels(endpoint).set(CIRCUIT_STATES[state])

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for this `Accept` header: OpenMetrics (with exemplars) when asked."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _exemplar() -> dict[str, str] | None:
    """The current trace, for histograms (rendered in OpenMetrics only)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
