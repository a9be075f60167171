"""The four dashboards. Metric names and labels are those of observability/metrics.py.

JetStream-derived gauges (pending, lag, dead-letter messages…) describe the server, not the
process that reports them: every edge replica reports the same value, so they are combined
with `max`, never `sum`. Counters and histograms are per process and are summed.
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard, stat, timeseries

from .panels import RATE, count, graph, latency

FAILED = '{outcome!="ok"}'  # publishes and handler runs that did not succeed
HTTP = "http_server_request_duration_seconds"


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]))"


def _errors(metric: str, by: str, selector: str) -> str:
    """Like `_rate`, but a group without errors reads 0 instead of vanishing from the graph."""
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]) or 0 * rate({metric}[{RATE}]))"


def _board(
    uid: str, title: str, description: str, *panels: timeseries.Panel | stat.Panel
) -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["bus"])
        .readonly()  # provisioned from files: edit the Python, not the UI
        .time("now-1h", "now")
        .refresh("10s")
    )
    for number, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(number))  # Grafana keys panel links and state by id
    return board


def bus_overview() -> dashboard.Dashboard:
    return _board(
        "bus-overview",
        "Bus overview",
        "Publish and consume throughput, latency, errors, consumer backlog and dead letters.",
        graph(
            "Published",
            "ops",
            (
                _rate("messaging_client_sent_messages_total", "messaging_destination_name"),
                "{{messaging_destination_name}}",
            ),
        ),
        graph(
            "Consumed",
            "ops",
            (
                _rate("messaging_client_consumed_messages_total", "messaging_consumer_group_name"),
                "{{messaging_consumer_group_name}}",
            ),
        ),
        latency(
            "Publish latency",
            "messaging_client_operation_duration_seconds",
            "messaging_destination_name",
        ),
        latency(
            "Handler duration",
            "messaging_process_duration_seconds",
            "messaging_consumer_group_name",
        ),
        graph(
            "Errors",
            "ops",
            (
                _errors(
                    "messaging_client_sent_messages_total", "messaging_destination_name", FAILED
                ),
                "publish {{messaging_destination_name}}",
            ),
            (
                _errors(
                    "messaging_client_consumed_messages_total",
                    "messaging_consumer_group_name",
                    FAILED,
                ),
                "handle {{messaging_consumer_group_name}}",
            ),
            description="Publishes and handler runs whose outcome was not ok, per second.",
        ),
        graph(
            "Consumer pending",
            "short",
            (
                "max by (stream, consumer) (bus_consumer_pending_messages)",
                "{{stream}}/{{consumer}} not yet delivered",
            ),
            (
                "max by (stream, consumer) (bus_consumer_ack_pending_messages)",
                "{{stream}}/{{consumer}} awaiting ack",
            ),
            description="A consumer's lag: messages it has not been sent, and sent but unacked.",
        ),
        graph(
            "Redeliveries",
            "short",
            (
                "max by (stream, consumer) (bus_consumer_redelivered_messages)",
                "{{stream}}/{{consumer}}",
            ),
            description="Messages delivered more than once and not acknowledged yet.",
        ),
        graph(
            "Dead letters",
            "short",
            (
                f"sum by (stream, consumer) (increase(bus_dead_letters_total[{RATE}]))",
                "new from {{stream}}/{{consumer}}",
            ),
            ("max by (stream) (bus_dead_letter_messages)", "waiting in DLQ_{{stream}}"),
            description="Messages that failed max_deliver times or could not be decoded.",
        ),
    )


def projections() -> dashboard.Dashboard:
    def gauge(title: str, metric: str, unit: str = "short") -> timeseries.Panel:
        return graph(title, unit, (f"max by (projection) ({metric})", "{{projection}}"))

    return _board(
        "bus-projections",
        "Projections",
        "How far each projection has folded its stream, and whether it keeps up.",
        gauge("Position (stream sequence)", "bus_projection_position", "none"),
        gauge("Lag (events behind)", "bus_projection_lag_events"),
        gauge("Rebuild progress", "bus_projection_rebuild_progress_ratio", "percentunit")
        .min(0)
        .max(1),
        gauge("Apply failures", "bus_projection_apply_failures"),
    )


def edge_http() -> dashboard.Dashboard:
    server_errors = _errors(f"{HTTP}_count", "http_route", '{http_response_status_code=~"5.."}')
    return _board(
        "bus-edge-http",
        "Edge HTTP",
        "Rate, errors and duration of the edge's requests, by route template.",
        graph("Requests", "reqps", (_rate(f"{HTTP}_count", "http_route"), "{{http_route}}")),
        graph(
            "5xx ratio",
            "percentunit",
            (f"{server_errors} / {_rate(f'{HTTP}_count', 'http_route')}", "{{http_route}}"),
        ),
        graph(
            "Client errors (4xx)",
            "reqps",
            (
                _rate(
                    f"{HTTP}_count",
                    "http_route, http_response_status_code",
                    '{http_response_status_code=~"4.."}',
                ),
                "{{http_response_status_code}} {{http_route}}",
            ),
        ),
        latency("Duration", HTTP, "http_route"),
    )


def components() -> dashboard.Dashboard:
    alive = "max by (component) (bus_components_alive)"
    healthy = "min by (component) (bus_component_up)"  # any edge seeing a failure counts
    failed = _errors("bus_component_health_checks_total", "component", '{status="fail"}')
    return _board(
        "bus-components",
        "Components",
        "Component instances heartbeating in the registry, and the edge's health checks of them.",
        count("Alive now", alive, "{{component}}"),
        graph("Alive instances", "short", (alive, "{{component}}"), width=24),
        graph(
            "Healthy (1) or failing (0)",
            "short",
            (healthy, "{{component}}"),
            description="0 while an instance fails the edge's health check (alert BusComponentUnhealthy).",
        ),
        graph("Failed health checks", "ops", (failed, "{{component}}")),
    )


DASHBOARDS: list[Callable[[], dashboard.Dashboard]] = [
    bus_overview,
    projections,
    edge_http,
    components,
]
