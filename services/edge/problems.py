"""Every error leaves as `application/problem+json` (RFC 9457), with no stack trace."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from bus import (
    BusClosed,
    BusError,
    BusTimeout,
    ConcurrencyError,
    ConfigError,
    ConnectError,
    DecodeError,
    NoStreamForSubject,
    OutboundBufferFull,
    StreamNotFound,
)

PROBLEM = "application/problem+json"
# Embedded with its own `$defs` (hoisted into components/schemas: services/edge/openapi.py),
# so generated clients share one Problem type.
PROBLEM_SCHEMA = {
    "$ref": "#/$defs/Problem",
    "$defs": {
        "Problem": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
            },
            "required": ["type", "title", "status"],
        }
    },
}
# Every refusal the edge can give, documented once for all routes (OpenAPI stays true).
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": HTTPStatus(code).phrase, "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}
    for code in (400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504)
}


def problem(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, **extra}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _status_of(exc: BusError) -> tuple[int, str]:
    if isinstance(exc, ConcurrencyError):
        return 409, "Version conflict"
    if isinstance(exc, StreamNotFound | NoStreamForSubject):
        return 404, "Not found"
    if isinstance(exc, DecodeError):
        return 422, "Invalid event"
    if isinstance(exc, ConfigError):
        return 400, "Bad request"
    if isinstance(exc, BusTimeout):
        return 504, "Timed out"
    if isinstance(exc, ConnectError | BusClosed | OutboundBufferFull):
        return 503, "NATS unavailable"
    return 502, "Bus error"


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = problem(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        return problem(422, "Invalid request", errors=errors)

    @app.exception_handler(BusError)
    async def bus_error(request: Request, exc: BusError) -> JSONResponse:
        return from_bus_error(exc)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names only the first
    route's, where a path has several (GET and PUT of a key are two routes)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def from_bus_error(exc: BusError) -> JSONResponse:
    """The problem a BusError is answered with."""
    status, title = _status_of(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, ConcurrencyError):
        extra = {"expected": exc.expected, "actual": exc.actual}
    return problem(status, title, str(exc), **extra)
