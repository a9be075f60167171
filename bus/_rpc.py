"""Typed request/reply. Responders are `nats.micro` services, so `$SRV.PING/INFO/STATS`
discovery works with the standard `nats micro` tooling; requests and replies are msgspec Structs.

    async def get_task(req: GetTask) -> TaskView: ...
    await bus.serve("tasks.get", get_task, service="tasks")
    view = await bus.request("tasks.get", GetTask(id="7f3c"), TaskView, timeout=1.0)

A responder that raises answers with a service error; the caller gets `RemoteError`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.micro
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import Service

from ._errors import BusClosed, ConfigError, NoResponders, RemoteError, RequestTimeout
from ._subjects import validate_pattern, validate_subject

log = logging.getLogger("bus.rpc")
R = TypeVar("R")
ERROR_HEADER, ERROR_CODE_HEADER = "Nats-Service-Error", "Nats-Service-Error-Code"
_encode = msgspec.json.Encoder().encode


async def request(
    nc: NATS, subject: str, payload: Any, response_type: type[R], timeout: float = 5.0
) -> R:
    validate_subject(subject)
    try:
        msg = await nc.request(subject, _encode(payload), timeout=timeout)
    except nats.errors.TimeoutError:
        raise RequestTimeout(subject, timeout) from None
    except nats.errors.NoRespondersError:
        raise NoResponders(subject) from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
        raise BusClosed("the connection is closed") from None
    hdrs = msg.headers or {}
    if ERROR_HEADER in hdrs:
        raise RemoteError(subject, int(hdrs.get(ERROR_CODE_HEADER) or 500), hdrs[ERROR_HEADER])
    try:
        return msgspec.json.decode(msg.data, type=response_type)
    except msgspec.DecodeError as exc:
        raise RemoteError(subject, 502, f"unreadable reply: {exc}") from None


class Responder:
    """A running responder (a `nats.micro` service with one endpoint); `stop()` ends it, and
    a closing Bus stops those still running."""

    def __init__(self, service: Service) -> None:
        self._service: Service | None = service

    @property
    def running(self) -> bool:
        return self._service is not None

    async def stop(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            with contextlib.suppress(Exception):  # (nats.micro raises its own kinds)
                await service.stop()


async def serve(
    nc: NATS,
    subject: str,
    handler: Callable[[Any], Awaitable[Any]],
    *,
    service: str,
    version: str = "0.1.0",
    queue_group: str | None = None,
    description: str = "",
) -> Responder:
    """Start a micro service with one endpoint on `subject`."""
    validate_pattern(subject)
    request_type = _request_type(handler)
    decoder = msgspec.json.Decoder(request_type)

    async def endpoint(req: Request) -> None:
        try:
            payload = decoder.decode(req.data)
        except msgspec.DecodeError as exc:
            await req.respond_error("400", f"bad request: {exc}")
            return
        try:
            result = await handler(payload)
        except Exception as exc:
            log.exception("responder %s failed", subject)
            await req.respond_error("500", f"{type(exc).__name__}: {exc}")
            return
        await req.respond(_encode(result))

    try:
        svc = await nats.micro.add_service(
            nc, name=service, version=version, description=description or service
        )
        name = subject.replace(".", "_").replace("*", "any").replace(">", "all")
        await svc.add_endpoint(
            name=name, subject=subject, handler=endpoint, queue_group=queue_group
        )
    except ValueError as exc:  # nats.micro validates names and versions with ValueError
        raise ConfigError(f"service {service!r}: {exc}") from None
    return Responder(svc)


def _request_type(handler: Callable[..., Any]) -> Any:
    params = list(inspect.signature(handler).parameters.values())
    if len(params) != 1 or not inspect.iscoroutinefunction(handler):
        raise ConfigError(f"responder {handler!r} must be an async function of one argument")
    hints = typing.get_type_hints(handler)
    return hints.get(params[0].name, Any)
