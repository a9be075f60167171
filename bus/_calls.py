"""Requests as a Bus makes them: the endpoint's circuit asked first (an open one refuses at
once), a CLIENT span whose context travels in the request's headers, the outcome counted and
fed back to the circuit. Replies come back on the connection's own lane (`Connection.ask`).

An endpoint names what a request is an instance of, for span names, metric labels and its
circuit: the subject itself by default, or the pattern it matches (`tasks.*.get`) when
subjects carry ids, so labels stay bounded.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import msgspec
import nats.errors

from ._breaker import Circuits
from ._errors import (
    BusClosed,
    BusError,
    CircuitOpen,
    ConfigError,
    NoResponders,
    RemoteError,
    RequestTimeout,
)
from ._nats.connection import Connection
from ._nats.wire import encode_headers, parse_headers
from ._subjects import validate_subject
from ._telemetry import Telemetry, failed
from ._trace_context import carried

R = TypeVar("R")
ERROR_HEADER, ERROR_CODE_HEADER = "Nats-Service-Error", "Nats-Service-Error-Code"
_encode = msgspec.json.Encoder().encode
_valid = functools.lru_cache(maxsize=4096)(validate_subject)  # (a refusal is not cached)


def outcome_of(error: BusError) -> str:
    """The bounded `outcome` label of a failed request."""
    if isinstance(error, RemoteError):
        return "refused" if error.callers_fault else "error"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, NoResponders):
        return "no_responders"
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    return "closed"


def _counts_against(error: BusError) -> bool:
    """Whether the failure says the endpoint is unwell (not a refusal of the request)."""
    if isinstance(error, RemoteError):
        return not error.callers_fault
    return isinstance(error, RequestTimeout | NoResponders)


class Caller(Protocol):
    """What `request` needs of a Bus."""

    telemetry: Telemetry
    circuits: Circuits

    @property
    def nc(self) -> Connection: ...


def request(
    bus: Caller,
    subject: str,
    payload: Any,
    response_type: type[R],
    timeout: float = 5.0,
    *,
    endpoint: str | None = None,
) -> Coroutine[Any, Any, R]:
    """`Bus.request`: the reply to `payload` on `subject`, decoded as `response_type` (await
    it); `endpoint` names what the subject is an instance of (see above). A plain function
    handing back the coroutine: no async layer of its own on every request."""
    return _request(bus.nc, bus.telemetry, bus.circuits, subject, payload, response_type,
                    timeout, endpoint or subject)  # fmt: skip


async def _request(
    nc: Connection,
    telemetry: Telemetry,
    circuits: Circuits,
    subject: str,
    payload: Any,
    response_type: type[R],
    timeout: float,
    endpoint: str,
) -> R:
    _valid(subject)
    observer = telemetry.observer
    try:
        circuit = circuits.admit(endpoint)
    except CircuitOpen:
        if observer is not None:
            observer.requested(endpoint, "circuit_open", 0.0)
        raise
    data = _encode(payload)
    if telemetry.tracer is None:  # (the hot path: no span, the caller's context passed on)
        span, headers = None, carried()
    else:
        headers = {}
        span = telemetry.start_request(endpoint, headers)
    started = time.perf_counter() if observer is not None else 0.0
    try:
        block = encode_headers(headers) if headers else None
        if len(data) + len(block or b"") > nc.max_payload:
            raise ConfigError(f"a request on {subject!r} larger than the server takes")
        if nc.is_closed or nc.is_draining:
            raise BusClosed("the connection is closed")
        try:
            data, raw = await nc.ask(subject, data, block, timeout)
        except TimeoutError:
            raise RequestTimeout(subject, timeout) from None
        except nats.errors.Error as exc:  # (opening the replies' lane as the connection closes)
            raise BusClosed(f"the connection failed: {exc}") from None
        if raw is not None:
            status, hdrs = parse_headers(raw)
            if status == "503":
                raise NoResponders(subject)
            if ERROR_HEADER in hdrs:
                code = hdrs.get(ERROR_CODE_HEADER) or ""
                raise RemoteError(subject, int(code) if code.isdigit() else 500, hdrs[ERROR_HEADER])
        try:
            result = msgspec.json.decode(data, type=response_type)
        except msgspec.DecodeError as exc:
            raise RemoteError(subject, 502, f"unreadable reply: {exc}") from None
    except BusError as exc:
        if _counts_against(exc):
            circuits.failed(endpoint)
        elif isinstance(exc, RemoteError):  # refused, yet answered: the responder is well
            circuits.succeeded(circuit)
        else:  # our own connection closing says nothing about the endpoint
            circuits.abandoned(circuit)
        if span is not None:
            failed(span, exc)
            span.end()
        if observer is not None:
            observer.requested(endpoint, outcome_of(exc), time.perf_counter() - started)
        raise
    except BaseException:  # cancelled: no verdict on the endpoint
        circuits.abandoned(circuit)
        if span is not None:
            span.end()
        raise
    circuits.succeeded(circuit)
    if span is not None:
        span.end()
    if observer is not None:
        observer.requested(endpoint, "ok", time.perf_counter() - started)
    return result
