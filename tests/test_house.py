"""The shape of the code, checked: an honest public surface (httpx's test), no import
circle anywhere, small modules, nats-py's private names only in the fast lane, and imports
that point one way (services over bus and observability; bus over nothing of ours)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import bus

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bus", "services", "observability")
MAX_LINES = 400
FAST_LANE = "bus._nats"


def modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of ours."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imported(name: str, path: Path) -> Iterator[str]:
    """The modules of ours `name` imports, wherever in it (deferred imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        yield from (f for f in found if f.split(".")[0] in PACKAGES)


def graph() -> dict[str, set[str]]:
    ours = dict(modules())
    return {
        name: {target for target in imported(name, path) if target in ours and target != name}
        for name, path in ours.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # (for the walk only: other tests rely on the default)
    try:
        for node in edges:
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_public_api_is_exactly_what_bus_exports() -> None:
    """Every public name of the package is in `__all__` once, and nothing else: the modules
    behind it are private. `testing` is the pytest plugin, loaded by pytest. (The order of
    `__all__` is ruff's to keep.)"""
    public = [m for m in vars(bus) if m.isidentifier() and not m.startswith("_")]
    assert sorted(bus.__all__) == sorted(m for m in public if m != "testing")


def test_no_import_circle_anywhere() -> None:
    edges = graph()
    # A package's __init__ re-exports its modules, which import the package back only
    # for names it re-exports: not a circle of code, so the package edges are left out.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(f"{t}.")}
    assert circles(edges) == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n for name, path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_imports_point_one_way() -> None:
    """bus imports nothing of services or observability (but `python -m bus`, which runs the
    command, and the test plugin's in-process edge); observability imports nothing of ours."""
    allowed = {"bus.__main__", "bus.testing"}
    for name, targets in graph().items():
        tops = {t.split(".")[0] for t in targets}
        if name.startswith("bus") and name not in allowed:
            assert tops <= {"bus"}, (name, targets)
        if name.startswith("observability"):
            assert tops <= {"observability"}, (name, targets)


def test_nats_py_private_names_are_reached_only_in_the_fast_lane() -> None:
    """Outside `bus._nats`, nothing reaches an attribute with a leading underscore of an
    object other than itself (nats-py's private parser, buffers, subscription ids...)."""
    reached = []
    for name, path in modules():
        if name.startswith(FAST_LANE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                continue
            reached.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert reached == []


def test_services_reach_nats_only_through_bus() -> None:
    """No service imports nats-py or reaches for a Bus's nats-py client (`nc`, `js`): all
    of it goes through bus's API. The exceptions are the benchmarks' baselines, which are
    raw nats-py on purpose, and the ceiling, which measures the fast lane itself."""
    baselines = {
        "services.bench.messaging",
        "services.bench.state",
        "services.bench.ceiling",
        "services.bench.rpc",
        "services.bench.kv",
    }
    reached = []
    for name, path in modules():
        if not name.startswith("services.") or name in baselines:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("nc", "js"):
                reached.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                module = node.module if isinstance(node, ast.ImportFrom) else None
                if any(n.split(".")[0] == "nats" for n in [*names, module or ""]):
                    reached.append(f"{name}:{node.lineno} imports nats")
    assert reached == []
