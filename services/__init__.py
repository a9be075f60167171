"""Runnable components built on `bus`: the CLI and the services `bus up` starts."""
