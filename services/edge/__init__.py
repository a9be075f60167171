"""The edge: a thin FastAPI app over the bus (health, events, projections), one port."""

from .app import create_app

__all__ = ("create_app",)
