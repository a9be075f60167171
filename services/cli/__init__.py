"""The `bus` command: `main` is its entry point (`bus = services.cli:main`)."""

from .main import main

__all__ = ["main"]
