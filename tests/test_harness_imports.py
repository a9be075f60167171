"""The harness packages (`services/bench`, `services/soak`) import one another in one direction:
no module of theirs reaches back, directly or round about, to one that imports it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SERVICES = Path(__file__).parent.parent / "services"


def imports_within(package: str) -> dict[str, set[str]]:
    """Each module of `services.<package>` and the modules of that package it imports, at
    the top or inside a function (a deferred import is an edge all the same)."""
    prefix = f"services.{package}"
    graph: dict[str, set[str]] = {}
    for path in sorted((SERVICES / package).glob("*.py")):
        name = prefix if path.stem == "__init__" else f"{prefix}.{path.stem}"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):  # `from .x import y` may name module x.y
                anchor = [prefix.rsplit(".", node.level - 1)[0]] if node.level else []
                base = ".".join([*anchor, *filter(None, [node.module])])
                found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m.startswith(f"{prefix}.") and m != name}
    return graph


@pytest.mark.parametrize("package", ["bench", "soak"])
def test_no_import_circle_in_the_harness(package: str) -> None:
    graph = imports_within(package)
    assert len(graph) > 3  # the package was found, with its modules
    modules = set(graph)
    order = graphlib.TopologicalSorter({m: deps & modules for m, deps in graph.items()})
    order.prepare()  # raises CycleError, naming the circle, if there is one
