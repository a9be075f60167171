"""The services that run an app: settings, process lifecycle, telemetry, health probes,
`bus up`, and the worker and projector processes."""
