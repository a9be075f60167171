"""The two-stream shop of tests/shapes.py as a module `bus projector` can load
(`--app tests.chaos.cluster_app:app`), with domains of its own on the shared cluster."""

from tests.shapes import shop

SHOP = shop("fo")
app = SHOP.app
