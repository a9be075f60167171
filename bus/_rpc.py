"""Typed request/reply, the responder's side and the wire. Responders are `nats.micro`
services, so `$SRV.PING/INFO/STATS` discovery works with the standard `nats micro` tooling;
requests and replies are msgspec Structs.

    @app.serve("tasks.get")                                  # hosted by bus worker / bus up
    async def get_task(req: GetTask) -> TaskView: ...

    await bus.serve("tasks.get", get_task, service="tasks")  # or started by hand
    view = await bus.request("tasks.get", GetTask(id="7f3c"), TaskView, timeout=1.0)

A responder raising ServiceError answers with its code, one raising anything else with 500, a
request it cannot decode gets 400: the caller gets RemoteError. Each answer is a SERVER span
(a child of the caller's CLIENT span) and counted per service and endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import nats.micro
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import Service

from ._errors import BusClosed, ConfigError, RemoteError, ServiceError
from ._subjects import validate_pattern
from ._telemetry import Telemetry, failed

log = logging.getLogger("bus.rpc")
SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what nats.micro accepts, bounded
ENDPOINT_NAME = re.compile(r"[^A-Za-z0-9_-]")  # what it does not accept in a name
MAX_DESCRIPTION = 1024  # characters of an error description sent back in a header
_encode = msgspec.json.Encoder().encode
_NO_HEADERS: Mapping[str, str] = {}

Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class ResponderSpec:
    """One endpoint to serve: its subject (a pattern), handler and the service it is part of;
    `concurrency` requests are answered at once."""

    subject: str
    handler: Handler
    request_type: Any
    service: str
    version: str = "0.1.0"
    queue_group: str | None = None
    concurrency: int = 16


def responder_spec(
    handler: Handler,
    subject: str,
    *,
    service: str,
    version: str = "0.1.0",
    queue_group: str | None = None,
    concurrency: int = 16,
) -> ResponderSpec:
    validate_pattern(subject)
    if not SERVICE_NAME.fullmatch(service):
        raise ConfigError(f"service name {service!r}: letters, digits, - and _ (at most 64)")
    if concurrency < 1:
        raise ConfigError("a responder's concurrency must be >= 1")
    return ResponderSpec(
        subject, handler, _request_type(handler), service, version, queue_group, concurrency
    )


class Responder:
    """A running `nats.micro` service (one or more endpoints); `stop()` ends it once the
    answers in flight are sent, and a closing Bus stops those still running."""

    def __init__(self, service: Service, answering: set[Any]) -> None:
        self._service: Service | None = service
        self._answering = answering

    @property
    def running(self) -> bool:
        return self._service is not None

    async def stop(self, timeout: float = 10.0) -> None:
        service, self._service = self._service, None
        if service is None:
            return
        with contextlib.suppress(Exception):  # (nats.micro raises its own kinds)
            await service.stop()
        if self._answering:
            await asyncio.wait(list(self._answering), timeout=timeout)


async def start_services(
    nc: NATS, telemetry: Telemetry, specs: list[ResponderSpec]
) -> list[Responder]:
    """A micro service per service name and version, with an endpoint per spec of it."""
    services: dict[tuple[str, str], list[ResponderSpec]] = {}
    for spec in specs:
        await _not_stored(nc, spec.subject)
        services.setdefault((spec.service, spec.version), []).append(spec)
    return [await _start_service(nc, telemetry, group) for group in services.values()]


async def _start_service(nc: NATS, telemetry: Telemetry, specs: list[ResponderSpec]) -> Responder:
    first, answering = specs[0], set[Any]()
    try:
        svc = await nats.micro.add_service(
            nc, name=first.service, version=first.version, description=first.service
        )
    except ValueError as exc:  # nats.micro validates names and versions with ValueError
        raise ConfigError(f"service {first.service!r}: {exc}") from None
    except nats.errors.Error as exc:
        raise BusClosed(f"starting service {first.service!r}: {exc}") from None
    try:
        for spec in specs:
            name = spec.subject.replace("*", "any").replace(">", "all")
            await svc.add_endpoint(
                name=ENDPOINT_NAME.sub("_", name),
                subject=spec.subject,
                handler=_endpoint(spec, telemetry, answering),
                queue_group=spec.queue_group,
            )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await svc.stop()
        if isinstance(exc, ValueError):  # (a queue group with spaces)
            raise ConfigError(f"service {first.service!r}: {exc}") from None
        if isinstance(exc, nats.errors.Error):
            raise BusClosed(f"starting service {first.service!r}: {exc}") from None
        raise
    return Responder(svc, answering)


def _endpoint(
    spec: ResponderSpec, telemetry: Telemetry, answering: set[Any]
) -> Callable[[Request], Awaitable[None]]:
    """What nats.micro calls per request: the answer, in a task of its own beyond one at a
    time (nats-py calls a subscription's handler for one message after another)."""
    decode = msgspec.json.Decoder(spec.request_type).decode
    service, subject, handler = spec.service, spec.subject, spec.handler

    async def answer(req: Request) -> None:
        started = time.perf_counter()
        outcome, code, text, reply = "ok", 0, "", b""
        with telemetry.serving(service, subject, req.headers or _NO_HEADERS) as span:
            try:
                reply = _encode(await handler(decode(req.data)))
            except msgspec.DecodeError as exc:  # (validation errors included)
                outcome, code, text = "bad_request", 400, f"bad request: {exc}"
            except ServiceError as exc:
                code = exc.code if 400 <= exc.code < 600 else 500
                outcome, text = "refused" if code < 500 else "error", exc.description
            except Exception as exc:
                log.exception("responder %s failed", subject)
                outcome, code, text = "error", 500, f"{type(exc).__name__}: {exc}"
            try:
                if code:
                    if span is not None:
                        span.set_attribute("rpc.response.status_code", str(code))
                        if code >= 500:
                            failed(span, RemoteError(subject, code, text))
                    await req.respond_error(str(code), _header_safe(text))
                else:
                    await req.respond(reply)
            except nats.errors.Error as exc:  # the connection went away: nobody to answer
                log.debug("responder %s could not answer: %s", subject, exc)
        if telemetry.observer is not None:
            telemetry.observer.served(service, subject, outcome, time.perf_counter() - started)

    if spec.concurrency == 1:
        return answer
    slots = asyncio.Semaphore(spec.concurrency)

    def done(task: asyncio.Task[None]) -> None:
        answering.discard(task)
        slots.release()

    async def dispatch(req: Request) -> None:
        await slots.acquire()  # at the limit, requests wait in the subscription
        task = asyncio.create_task(answer(req))
        answering.add(task)
        task.add_done_callback(done)

    return dispatch


async def _not_stored(nc: NATS, subject: str) -> None:
    """Refuse a subject a stream captures: JetStream would store every request and answer
    it with a publish ack, first as often as not."""
    try:
        stream = await nc.jetstream().find_stream_name_by_subject(subject)
    except nats.errors.Error:  # none captures it (or JetStream is away: nothing to tell)
        return
    raise ConfigError(
        f"requests on {subject!r} would be stored by stream {stream!r}, whose subjects capture "
        "them: serve another subject, or narrow the stream's (events are <domain>.<id>.<event>:"
        " <domain>.*.*)"
    )


def _header_safe(text: str) -> str:
    """A description fit for a header value: printable, one line, bounded."""
    text = text[:MAX_DESCRIPTION]
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def _request_type(handler: Callable[..., Any]) -> Any:
    params = list(inspect.signature(handler).parameters.values())
    if len(params) != 1 or not inspect.iscoroutinefunction(handler):
        raise ConfigError(f"responder {handler!r} must be an async function of one argument")
    try:
        hints = typing.get_type_hints(handler)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"cannot read the annotations of responder {handler!r}: {exc}") from None
    return hints.get(params[0].name, Any)
