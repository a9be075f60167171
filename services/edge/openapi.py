"""`/openapi.json` as client generators and Swagger read it.

FastAPI's document lacks what a generated client needs: the bearer scheme and each
operation's scope (from the `auth.require` dependency the route really runs, so the document
cannot drift from the checks), resolvable references (msgspec schemas carry their own `$defs`,
which are hoisted into `components/schemas`), and the pattern of an event's subject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, routing

from bus import EVENT_SUBJECT_PATTERN

from .auth import require

SCHEME = "bearer"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key from BUS_API_KEYS or a JWT (BUS_JWT_*), sent as "
    "`Authorization: Bearer <key>`. Its scopes: `read`, `write` (publish, set state), `admin` "
    "(all of them), or subject patterns (`publish:<pattern>`, `read:<pattern>`).",
}
# Newer FastAPI keeps included routers lazy and flattens them here; older lists APIRoutes.
_flat: Callable[[list[Any]], Any] = getattr(routing, "iter_route_contexts", lambda routes: routes)
# Path parameters whose rules the route checks itself (400), declared for clients: (path,
# parameter) -> pattern. A request's subject (`/api/v1/requests/{subject}`) is not an event's.
PATTERNS = {("/api/v1/events/{subject}", "subject"): EVENT_SUBJECT_PATTERN}
LOCAL_REF = "#/$defs/"
COMPONENT_REF = "#/components/schemas/"
Document = dict[str, Any]


def install(api: FastAPI) -> None:
    """Serve the refined document (built once, on the first request, as FastAPI does)."""
    build: Callable[[], Document] = api.openapi

    def openapi() -> Document:
        if api.openapi_schema is None:
            refine(build(), scopes(api), public_reads=api.state.public_reads)
        return api.openapi_schema or {}

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way


def scopes(api: FastAPI) -> dict[tuple[str, str], require]:
    """The check each (path, method) runs (the plain one when it runs two); absent: open."""
    found: dict[tuple[str, str], require] = {}
    for route in _flat(api.routes):
        if not isinstance(getattr(route, "original_route", route), routing.APIRoute):
            continue
        for dependency in route.dependencies:
            if isinstance(check := dependency.dependency, require):
                for method in route.methods:
                    known = found.get((route.path_format, method.lower()))
                    if known is None or known.narrowed:
                        found[route.path_format, method.lower()] = check
    return found


def refine(doc: Document, scopes: dict[tuple[str, str], require], *, public_reads: bool) -> None:
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = SECURITY_SCHEME
    _hoist_defs(doc, components.setdefault("schemas", {}))
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            _secure(operation, scopes.get((path, method)), public_reads)
            for parameter in operation.get("parameters", []):
                pattern = PATTERNS.get((path, parameter["name"]))
                if pattern is not None and parameter["in"] == "path":
                    parameter["schema"]["pattern"] = pattern


def _secure(operation: Document, check: require | None, public_reads: bool) -> None:
    """The operation's `security` (3.1 lets a bearer requirement name its roles) and a line
    saying the same in words."""
    if check is None:
        operation["security"] = []
        note = "Open: no API key needed."
    elif check.scope == "read" and public_reads:
        operation["security"] = [{}, {SCHEME: [check.scope]}]
        note = "Open on this edge (BUS_PUBLIC_READS); otherwise an API key with `read`."
    else:
        operation["security"] = [{SCHEME: [check.scope]}]
        note = f"Needs an API key with the `{check.scope}` scope (`admin` holds every scope)."
        if check.narrowed:
            kinds = " or ".join(f"`{kind}:`" for kind in check.kinds)
            note += f" Or {kinds} patterns covering the names it touches (README: permissions)."
    description = operation.get("description", "")
    operation["description"] = f"{description}\n\n{note}" if description else note


def _hoist_defs(node: Any, schemas: Document) -> None:
    """Move every embedded `$defs` into `schemas` and point its references there."""
    if isinstance(node, list):
        for item in node:
            _hoist_defs(item, schemas)
    elif isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            _hoist_defs(schema, schemas)
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different schemas are named {name!r}")
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(LOCAL_REF):
            node["$ref"] = COMPONENT_REF + ref.removeprefix(LOCAL_REF)
        for value in node.values():
            _hoist_defs(value, schemas)
