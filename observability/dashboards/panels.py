"""The few panel shapes our dashboards use, so each dashboard states only titles and PromQL.

Every panel reads the Prometheus data source by its provisioned uid (`prometheus`, see
deploy/grafana/provisioning/datasources/); latency panels ask for exemplars, which that data
source links to Tempo, so a slow bucket opens the trace that filled it.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.dashboard import DataSourceRef

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"  # Grafana picks a window of at least four scrape intervals

Query = tuple[str, str]  # (PromQL, legend format)


def _targets(queries: tuple[Query, ...], exemplars: bool) -> list[Builder[Dataquery]]:
    return [
        prometheus.Dataquery()
        .ref_id(chr(ord("A") + i))
        .expr(expr)
        .legend_format(legend)
        .exemplar(exemplars)
        for i, (expr, legend) in enumerate(queries)
    ]


def graph(
    title: str, unit: str, *queries: Query, description: str = "", width: int = 12
) -> timeseries.Panel:
    """A time series of one or more PromQL expressions."""
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .targets(_targets(queries, exemplars=False))
        .height(8)
        .span(width)
    )
    return panel.description(description) if description else panel


def latency(title: str, histogram: str, by: str) -> timeseries.Panel:
    """p50 and p99 of a `_seconds` histogram per `by` label, with exemplars linking to traces."""
    buckets = f"sum by (le, {by}) (rate({histogram}_bucket[{RATE}]))"
    queries = tuple(
        (f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.99)
    )
    return graph(title, "s", description=f"p50 and p99 of {histogram}, by {by}.").targets(
        _targets(queries, exemplars=True)
    )


def count(title: str, expr: str, legend: str) -> stat.Panel:
    """The current value of each series as a big number (no graph behind it)."""
    return (
        stat.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .targets(_targets(((expr, legend),), exemplars=False))
        .height(6)
        .span(24)
    )
