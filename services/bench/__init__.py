"""`bus bench`: each scenario beside raw nats-py (or bare FastAPI) doing the same work.

One module per scenario, each with its entry point: `messaging.run_bench`,
`state.run_state_bench`, `http.run_http_bench`, `tracing.run_tracing_bench`; `summary` holds
the verdicts every scenario returns. Below them: `workload` (the messaging event and consumer,
shared with the `memory` probe), `ceiling` (the messaging work with no library semantics) and
`app` (the app the http scenario serves).

Nothing is imported here: the scenarios start children (`python -m services.bench.memory`,
`.state`, `.tracing`) whose memory and start-up are measured, and they must not pay for the
other scenarios' imports (FastAPI, the OpenTelemetry SDK).
"""
