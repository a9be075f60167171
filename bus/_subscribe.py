"""Declaring handlers: the `subscribe` decorator, what a handler accepts, and how it retries.

    router = Router()

    @router.subscribe(durable="mailer")          # subject from the annotation: tasks.*.created
    async def send_mail(event: TaskCreated) -> None: ...

    @router.subscribe("tasks.>", durable="audit", concurrency=1)
    async def audit(event: TaskCreated | TaskCompleted, envelope: Envelope) -> None: ...

    @router.subscribe(durable="indexer", batch_size=100)   # batch handler: a list of envelopes
    async def index(batch: list[Envelope[TaskCreated]]) -> None: ...

A handler that returns acks its message(s); one that raises is retried with exponential
backoff until `max_deliver` attempts, then its message goes to the dead-letter stream.
"""

from __future__ import annotations

import inspect
import random
import types
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._envelope import Envelope
from ._errors import ConfigError
from ._events import Event
from ._rpc import ResponderSpec, responder_spec
from ._subjects import validate_pattern, validate_token

Handler = Callable[..., Awaitable[None]]
Responds = TypeVar("Responds", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True)
class Backoff:
    """Delay before redelivery after a failed attempt: base * factor**(attempt-1), ±jitter."""

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        d = min(self.max, self.base * self.factor ** max(0, attempt - 1))
        return d * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True)
class HandlerSpec:
    """Everything the consumer runtime needs to run one handler."""

    fn: Handler
    durable: str
    subjects: tuple[str, ...]
    event_types: tuple[type[Event], ...]
    batch: bool
    wants_envelope: bool
    concurrency: int = 16
    batch_size: int = 1
    max_deliver: int = 5
    ack_wait: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def slots(self) -> int:
        """Messages this handler may hold at once: the bound on fetching."""
        return self.concurrency * self.batch_size

    def accepts(self, cls: type[Event]) -> bool:
        return not self.event_types or cls in self.event_types


def handler_spec(
    fn: Handler,
    subject: str | tuple[str, ...] | None = None,
    *,
    durable: str,
    events: tuple[type[Event], ...] | None = None,
    concurrency: int = 16,
    batch_size: int | None = None,
    max_deliver: int = 5,
    ack_wait: float = 30.0,
    backoff: Backoff | None = None,
) -> HandlerSpec:
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"handler {fn.__qualname__} must be an async function")
    validate_token(durable, "durable name")
    if concurrency < 1 or max_deliver < 1 or ack_wait <= 0:
        raise ConfigError("concurrency and max_deliver must be >= 1, ack_wait > 0")
    batch, wants_envelope, annotated = _read_signature(fn)
    event_types = tuple(events) if events else annotated
    if batch_size is not None and not batch:
        raise ConfigError(f"{fn.__qualname__}: batch_size needs a handler taking list[Envelope]")
    if subject is not None:  # (several: one consumer takes them all)
        listed = (subject,) if isinstance(subject, str) else subject
        subjects: tuple[str, ...] = tuple(validate_pattern(s) for s in listed)
    elif event_types and all(c.__domain__ and c.__event_name__ for c in event_types):
        subjects = tuple(dict.fromkeys(f"{c.__domain__}.*.{c.__event_name__}" for c in event_types))
    else:
        raise ConfigError(
            f"{fn.__qualname__}: pass a subject, or annotate the event with Event classes "
            "that name their __domain__ and __event_name__"
        )
    return HandlerSpec(
        fn=fn,
        durable=durable,
        subjects=subjects,
        event_types=event_types,
        batch=batch,
        wants_envelope=wants_envelope,
        concurrency=1 if batch and batch_size is None else concurrency,
        batch_size=(batch_size or 100) if batch else 1,
        max_deliver=max_deliver,
        ack_wait=ack_wait,
        backoff=backoff or Backoff(),
    )


def _read_signature(fn: Handler) -> tuple[bool, bool, tuple[type[Event], ...]]:
    """(is batch, wants the envelope, event classes) from the handler's annotations."""
    params = list(inspect.signature(fn).parameters.values())
    if not 1 <= len(params) <= 2:
        raise ConfigError(f"handler {fn.__qualname__} must take (event) or (event, envelope)")
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError) as exc:
        raise ConfigError(
            f"cannot read the annotations of {fn.__qualname__}: {exc} "
            "(event classes must be importable: define them at module level)"
        ) from None
    hint = hints.get(params[0].name)
    batch = typing.get_origin(hint) is list
    if batch:
        if len(params) != 1:
            raise ConfigError(f"batch handler {fn.__qualname__} takes one list[Envelope[...]]")
        hint = typing.get_args(hint)[0] if typing.get_args(hint) else None
        if typing.get_origin(hint) is Envelope or hint is Envelope:
            hint = typing.get_args(hint)[0] if typing.get_args(hint) else None
    return batch, len(params) == 2, tuple(_event_classes(hint))


def _event_classes(hint: Any) -> Iterator[type[Event]]:
    if hint is None or hint is Event:
        return
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            yield from _event_classes(arg)
    elif isinstance(hint, type) and issubclass(hint, Event):
        yield hint
    else:
        raise ConfigError(f"handler annotation {hint!r} is not an Event class")


class Router:
    """Collects handlers and responders before a Bus runs them (like FastAPI's APIRouter)."""

    def __init__(self) -> None:
        self.specs: list[HandlerSpec] = []
        self.responders: list[ResponderSpec] = []

    def subscribe(
        self, subject: str | None = None, *, durable: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        def decorator(fn: Handler) -> Handler:
            spec = handler_spec(fn, subject, durable=durable, **options)
            if any(s.durable == spec.durable for s in self.specs):
                raise ConfigError(f"durable name {spec.durable!r} is used twice")
            self.specs.append(spec)
            return fn

        return decorator

    def serve(self, subject: str, **options: Any) -> Callable[[Responds], Responds]:
        """Decorator: answer requests on `subject` once a Bus starts (options: `service`,
        required, `version`, `queue_group`, `concurrency`; see bus._rpc)."""

        def decorator(fn: Responds) -> Responds:
            spec = responder_spec(fn, subject, **options)
            if any(s.subject == spec.subject for s in self.responders):
                raise ConfigError(f"subject {spec.subject!r} is served twice")
            self.responders.append(spec)
            return fn

        return decorator

    def include(self, other: Router) -> None:
        for spec in other.specs:
            self.specs.append(spec)
        self.responders.extend(other.responders)
